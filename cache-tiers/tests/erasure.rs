//! Erasure-coded tier over in-process nodes with injected faults.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_tiers::testing::{FaultyTier, forge_shard};
use cache_tiers::{ErasureCodedTier, Error, HedgeBudget, MemoryTier, Node, Tier};

fn value(i: u64, len: usize) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(i);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    Bytes::from(v)
}

fn fleet(n: usize) -> (Vec<Arc<FaultyTier>>, Vec<Node>) {
    let faulty: Vec<Arc<FaultyTier>> = (0..n)
        .map(|i| {
            let mem: Arc<dyn Tier<String, Bytes>> = Arc::new(MemoryTier::new(256 << 20));
            Arc::new(FaultyTier::new(mem, format!("node{i}")))
        })
        .collect();
    let nodes = faulty.iter().map(|f| f.clone() as Node).collect();
    (faulty, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_is_not_waited_for_with_parity_but_is_without() {
    let k = "slow".to_string();
    let v = value(1, 100_000);
    let (faulty, nodes) = fleet(5);
    let l2 = ErasureCodedTier::builder(nodes).build().unwrap();
    l2.put(&k, v.clone()).await.unwrap();
    faulty[l2.placement(&k)[0]].set_delay(Duration::from_secs(2));
    let t = Instant::now();
    assert_eq!(l2.get(&k).await.unwrap(), Some(v.clone()));
    let with_parity = t.elapsed();
    assert!(
        with_parity < Duration::from_secs(1),
        "4-of-5 waited for the slow node: {with_parity:?}"
    );
    assert_eq!(l2.shard_stats().reconstructions, 1);

    let (faulty, nodes) = fleet(4);
    let striped = ErasureCodedTier::builder(nodes)
        .parity_shards(0)
        .build()
        .unwrap();
    striped.put(&k, v.clone()).await.unwrap();
    faulty[striped.placement(&k)[0]].set_delay(Duration::from_millis(500));
    let t = Instant::now();
    assert_eq!(striped.get(&k).await.unwrap(), Some(v));
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "4-of-4 cannot avoid the slow node"
    );
}

/// `n` nodes behind a 4+1 tier that never hedges: a get asks exactly the
/// first `k` nodes, and more only when one of them fails.
fn unhedged_fleet(n: usize) -> (Vec<Arc<FaultyTier>>, ErasureCodedTier) {
    let (faulty, nodes) = fleet(n);
    let l2 = ErasureCodedTier::builder(nodes)
        .hedge_budget(HedgeBudget::new(0.0, 0.0))
        .late_hedge(None)
        .build()
        .unwrap();
    (faulty, l2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hedge_budget_failures_are_replaced_by_follow_up_requests() {
    let (faulty, l2) = unhedged_fleet(5);
    let k = "follow".to_string();
    let v = value(2, 50_000);
    l2.put(&k, v.clone()).await.unwrap();
    assert_eq!(l2.get(&k).await.unwrap(), Some(v.clone()));
    let s = l2.shard_stats();
    assert_eq!(
        (s.hedged_gets, s.unhedged_gets, s.ok, s.followups),
        (0, 1, 4, 0)
    );
    faulty[l2.placement(&k)[1]].set_fail(true);
    assert_eq!(l2.get(&k).await.unwrap(), Some(v));
    let s = l2.shard_stats();
    assert_eq!((s.errors, s.followups, s.reconstructions), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_hedge_gets_around_a_slow_node_without_budget() {
    let (faulty, nodes) = fleet(5);
    let l2 = ErasureCodedTier::builder(nodes)
        .hedge_budget(HedgeBudget::new(0.0, 0.0))
        .late_hedge(Some(Duration::from_millis(20)))
        .build()
        .unwrap();
    let k = "late".to_string();
    let v = value(3, 10_000);
    l2.put(&k, v.clone()).await.unwrap();
    faulty[l2.placement(&k)[2]].set_delay(Duration::from_secs(2));
    let t = Instant::now();
    assert_eq!(l2.get(&k).await.unwrap(), Some(v));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(l2.shard_stats().followups, 1);
}

#[tokio::test]
async fn hedge_budget_limits_extra_requests() {
    let (_faulty, nodes) = fleet(5);
    let l2 = ErasureCodedTier::builder(nodes)
        .hedge_budget(HedgeBudget::new(0.25, 1.0))
        .build()
        .unwrap();
    let k = "budget".to_string();
    l2.put(&k, value(4, 1000)).await.unwrap();
    for _ in 0..100 {
        assert!(l2.get(&k).await.unwrap().is_some());
    }
    let s = l2.shard_stats();
    assert_eq!(s.hedged_gets + s.unhedged_gets, 100);
    // A quarter of a token per get, one per hedge, plus the burst of one.
    assert!((20..=27).contains(&s.hedged_gets), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_failures_is_an_error_and_too_many_misses_a_miss_never_wrong_bytes() {
    let (faulty, nodes) = fleet(6);
    let l2 = ErasureCodedTier::builder(nodes).build().unwrap();
    let k = "lossy".to_string();
    let v = value(5, 30_000);
    l2.put(&k, v.clone()).await.unwrap();
    let p = l2.placement(&k);
    faulty[p[0]].set_fail(true);
    faulty[p[3]].set_fail(true);
    assert!(matches!(
        l2.get(&k).await,
        Err(Error::Unavailable { failed: 2, .. })
    ));
    faulty[p[0]].set_fail(false);
    faulty[p[3]].set_fail(false);
    faulty[p[1]].set_forget(true);
    faulty[p[4]].set_forget(true);
    assert_eq!(l2.get(&k).await.unwrap(), None);
    faulty[p[1]].set_forget(false);
    faulty[p[4]].set_forget(false);
    // Two nodes return wrong bytes: not enough valid shards, and never a wrong value.
    faulty[p[2]].set_corrupt(true);
    faulty[p[4]].set_corrupt(true);
    assert_eq!(l2.get(&k).await.unwrap(), None);
    assert!(l2.shard_stats().corrupt >= 2);
    faulty[p[4]].set_corrupt(false);
    assert_eq!(l2.get(&k).await.unwrap(), Some(v));
}

/// Replaces shard `idx` of `key` on its node with a well-framed shard of wrong bytes.
async fn forge(l2: &ErasureCodedTier, faulty: &[Arc<FaultyTier>], key: &String, idx: usize) {
    let node = &faulty[l2.placement(key)[idx]];
    let skey = ErasureCodedTier::shard_key(key, idx);
    let good = node.get(&skey).await.unwrap().expect("shard stored");
    let bad = forge_shard(&good).expect("a framed shard");
    assert_ne!(bad, good);
    node.remove(&skey).await.unwrap();
    node.put(&skey, bad).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_framed_wrong_shard_among_the_first_k_does_not_lose_the_read() {
    for bad in 0..5usize {
        let (faulty, nodes) = fleet(5);
        let l2 = ErasureCodedTier::builder(nodes).build().unwrap();
        let k = format!("forged-{bad}");
        let v = value(10 + bad as u64, 100_000);
        l2.put(&k, v.clone()).await.unwrap();
        forge(&l2, &faulty, &k, bad).await;
        // A good node answers last, so the first 4 shards include the bad one.
        let slow = (bad + 1) % 5;
        faulty[l2.placement(&k)[slow]].set_delay(Duration::from_millis(100));
        assert_eq!(
            l2.get(&k).await.unwrap(),
            Some(v.clone()),
            "bad shard {bad}"
        );
        let s = l2.shard_stats();
        assert!(s.failed_rebuilds >= 1, "bad shard {bad}: {s:?}");
        // Every later read is right too, whatever order the shards come in.
        faulty[l2.placement(&k)[slow]].set_delay(Duration::ZERO);
        for _ in 0..5 {
            assert_eq!(l2.get(&k).await.unwrap(), Some(v.clone()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hedging_a_failed_rebuild_asks_the_parity_node() {
    let (faulty, l2) = unhedged_fleet(5);
    let k = "forged-unhedged".to_string();
    let v = value(20, 60_000);
    l2.put(&k, v.clone()).await.unwrap();
    forge(&l2, &faulty, &k, 1).await;
    assert_eq!(l2.get(&k).await.unwrap(), Some(v));
    let s = l2.shard_stats();
    // Shards 0-3 rebuild a value that fails its checksum; shard 4 is asked
    // for, and {0, 2, 3, 4} rebuilds the right one (after up to 3 other
    // subsets with shard 4, depending on the order shards arrived in).
    assert_eq!(
        (s.unhedged_gets, s.followups, s.reconstructions),
        (1, 1, 1),
        "{s:?}"
    );
    assert!((1..=4).contains(&s.failed_rebuilds), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_framed_wrong_shards_give_a_miss_or_the_right_value_never_wrong_bytes() {
    // 4+1 with two bad shards: no 4-subset is right, so a miss.
    let (faulty, nodes) = fleet(5);
    let l2 = ErasureCodedTier::builder(nodes).build().unwrap();
    let k = "two-forged".to_string();
    l2.put(&k, value(30, 40_000)).await.unwrap();
    forge(&l2, &faulty, &k, 0).await;
    forge(&l2, &faulty, &k, 4).await;
    assert_eq!(l2.get(&k).await.unwrap(), None);
    let s = l2.shard_stats();
    assert_eq!(s.failed_rebuilds, 5, "all five 4-subsets tried: {s:?}");
    assert!(s.corrupt >= 1, "{s:?}");

    // 4+2 with two bad shards: the four good ones still rebuild it.
    let (faulty, nodes) = fleet(6);
    let l2 = ErasureCodedTier::builder(nodes)
        .parity_shards(2)
        .build()
        .unwrap();
    let v = value(31, 40_000);
    l2.put(&k, v.clone()).await.unwrap();
    forge(&l2, &faulty, &k, 1).await;
    forge(&l2, &faulty, &k, 5).await;
    for _ in 0..5 {
        assert_eq!(l2.get(&k).await.unwrap(), Some(v.clone()));
    }
    assert!(l2.shard_stats().failed_rebuilds >= 1);
}

#[tokio::test]
async fn rendezvous_placement_moves_only_the_new_nodes_share() {
    let (_f, nodes) = fleet(20);
    let before = ErasureCodedTier::builder(nodes[..19].to_vec())
        .build()
        .unwrap();
    let after = ErasureCodedTier::builder(nodes.clone()).build().unwrap();
    let mut moved = 0;
    let keys = 2000;
    for i in 0..keys {
        let k = format!("key{i}");
        let (a, b) = (before.placement(&k), after.placement(&k));
        assert_eq!(a.len(), 5);
        let mut sa = a.clone();
        sa.sort_unstable();
        sa.dedup();
        assert_eq!(sa.len(), 5, "a key's shards go to distinct nodes");
        for (x, y) in a.iter().zip(&b) {
            if x != y {
                // Only the new node (index 19) can take a place; the others shift down.
                assert!(b.contains(&19), "key {k}: moved without the new node");
                moved += 1;
                let _ = y;
            }
        }
    }
    // The new node wins about 5/20 of the keys.
    let share = f64::from(moved) / f64::from(keys * 5);
    assert!(share < 0.2, "moved share {share}");
    let takes: usize = (0..keys)
        .filter(|i| after.placement(&format!("key{i}")).contains(&19))
        .count();
    let frac = takes as f64 / f64::from(keys);
    assert!(
        (0.18..0.32).contains(&frac),
        "new node holds {frac} of keys"
    );
}
