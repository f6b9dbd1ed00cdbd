//! The L2 over real memcached servers: nodes down, a node killed mid-run,
//! a node returning wrong bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_tiers::testing::MemcachedServer;
use cache_tiers::{ErasureCodedTier, MemcachedConfig, MemcachedNode, Node, Tier};

fn value(i: u64, len: usize) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(i);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    Bytes::from(v)
}

fn size_of(i: u64) -> usize {
    // Mostly 512 KiB chunks, some small and odd sizes.
    match i % 4 {
        0 => 512 * 1024,
        1 => 1 + (i as usize * 7919) % 200_000,
        2 => 512 * 1024,
        _ => 3,
    }
}

struct Fleet {
    servers: Vec<MemcachedServer>,
    nodes: Vec<Arc<MemcachedNode>>,
}

fn fleet(n: usize) -> Option<Fleet> {
    let servers: Vec<MemcachedServer> = (0..n)
        .map(|_| MemcachedServer::start(64))
        .collect::<Option<_>>()?;
    let config = MemcachedConfig::default()
        .with_timeouts(Duration::from_millis(300), Duration::from_millis(200));
    let nodes = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Arc::new(
                MemcachedNode::new(s.addr().to_string(), config.clone())
                    .with_name(format!("mc{i}")),
            )
        })
        .collect();
    Some(Fleet { servers, nodes })
}

fn tier(f: &Fleet, k: usize, m: usize) -> ErasureCodedTier {
    let nodes: Vec<Node> = f.nodes.iter().map(|n| n.clone() as Node).collect();
    ErasureCodedTier::builder(nodes)
        .data_shards(k)
        .parity_shards(m)
        .build()
        .unwrap()
}

async fn fill(l2: &ErasureCodedTier, keys: u64) {
    for i in 0..keys {
        l2.put(&format!("key{i}"), value(i, size_of(i)))
            .await
            .unwrap();
    }
}

async fn check_all(l2: &ErasureCodedTier, keys: u64, what: &str) {
    for i in 0..keys {
        let got = l2
            .get(&format!("key{i}"))
            .await
            .unwrap_or_else(|e| panic!("{what}: key{i}: {e}"));
        assert!(
            got == Some(value(i, size_of(i))),
            "{what}: key{i} wrong or missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stay_correct_with_up_to_m_nodes_down() {
    for (k, m) in [(4usize, 1usize), (3, 2)] {
        let Some(mut f) = fleet(5) else { return };
        let l2 = tier(&f, k, m);
        fill(&l2, 24).await;
        check_all(&l2, 24, &format!("{k}+{m}, all up")).await;
        for down in 0..m {
            f.servers[down].stop();
            check_all(&l2, 24, &format!("{k}+{m}, {} down", down + 1)).await;
        }
        // One more down: never wrong bytes; keys with a shard on the dead
        // nodes beyond m are unavailable (an error), not a silent miss.
        f.servers[m].stop();
        let mut unavailable = 0;
        for i in 0..24 {
            match l2.get(&format!("key{i}")).await {
                Ok(Some(v)) => assert!(
                    v == value(i, size_of(i)),
                    "{k}+{m}: wrong bytes with {} down",
                    m + 1
                ),
                Ok(None) => {
                    panic!("{k}+{m}: stored key{i} reported as a miss while nodes are down")
                }
                Err(e) => {
                    assert!(matches!(e, cache_tiers::Error::Unavailable { .. }), "{e}");
                    unavailable += 1;
                }
            }
        }
        assert!(
            unavailable > 0,
            "with {} of 5 nodes down some keys must be unreadable",
            m + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_run_costs_no_read() {
    let Some(mut f) = fleet(5) else { return };
    let l2 = Arc::new(tier(&f, 4, 1));
    let keys = 16;
    fill(&l2, keys).await;
    let reads = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(3);
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let l2 = Arc::clone(&l2);
            let reads = Arc::clone(&reads);
            tokio::spawn(async move {
                let mut i = r;
                while Instant::now() < deadline {
                    let key = format!("key{}", i % keys);
                    match l2.get(&key).await {
                        Ok(Some(v)) => assert!(
                            v == value(i % keys, size_of(i % keys)),
                            "{key}: wrong bytes"
                        ),
                        other => panic!("{key}: {other:?} while at most one node was down"),
                    }
                    reads.fetch_add(1, Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = reads.load(Relaxed);
    f.servers[2].stop();
    for r in readers {
        r.await.unwrap();
    }
    let after = reads.load(Relaxed) - before;
    assert!(
        before > 10 && after > 10,
        "reads before {before}, after the kill {after}"
    );
    assert!(
        l2.shard_stats().errors > 0,
        "the dead node must have been asked"
    );
}

/// One stored shard of a key, as memcached holds it.
struct Stored {
    i: u64,
    key: String,
    idx: usize,
    node: Arc<MemcachedNode>,
    skey: String,
    good: Bytes,
}

/// Shard `i % 5` of every key `key{i}`, read straight from its node.
async fn stored_shards(f: &Fleet, l2: &ErasureCodedTier, keys: u64) -> Vec<Stored> {
    let mut out = Vec::new();
    for i in 0..keys {
        let key = format!("key{i}");
        let idx = (i % 5) as usize;
        let node = f.nodes[l2.placement(&key)[idx]].clone();
        let skey = ErasureCodedTier::shard_key(&key, idx);
        let good = node.get_raw(&skey).await.unwrap().expect("shard stored");
        out.push(Stored {
            i,
            key,
            idx,
            node,
            skey,
            good,
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_returning_wrong_bytes_is_detected_and_never_returned() {
    let Some(f) = fleet(5) else { return };
    let l2 = tier(&f, 4, 1);
    let keys = 12u64;
    fill(&l2, keys).await;
    // Overwrite one shard of every key directly in memcached: garbage, a
    // flipped byte in the payload, and a well-formed shard of another value
    // for the same key and position.
    for Stored {
        i,
        key,
        idx,
        node,
        skey,
        good,
    } in stored_shards(&f, &l2, keys).await
    {
        let bad = match i % 3 {
            0 => value(1000 + i, good.len()),
            1 => {
                let mut b = good.to_vec();
                let last = b.len() - 1;
                b[last] ^= 0x80;
                Bytes::from(b)
            }
            _ => {
                // Same key and position, another value: valid on its own.
                let other = tier_shard_of(&key, idx, value(2000 + i, size_of(i))).await;
                assert_ne!(other, good);
                other
            }
        };
        node.set_raw(&skey, bad).await.unwrap();
    }
    check_all(&l2, keys, "one bad shard per key").await;
    let s = l2.shard_stats();
    // Garbage and flipped bytes fail their checks; the foreign shard is
    // valid but belongs to another value and is never combined.
    assert!(s.corrupt >= 8, "{s:?}");
    // Two bad shards of one key: too few valid shards, so a miss, not wrong bytes.
    let key = "key1".to_string();
    let p = l2.placement(&key);
    for idx in [2usize, 3] {
        f.nodes[p[idx]]
            .set_raw(
                &ErasureCodedTier::shard_key(&key, idx),
                Bytes::from_static(b"junk"),
            )
            .await
            .unwrap();
    }
    assert_eq!(l2.get(&key).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_framed_shard_of_wrong_bytes_costs_no_read_with_4_of_5() {
    let Some(f) = fleet(5) else { return };
    let l2 = tier(&f, 4, 1);
    let keys = 12u64;
    fill(&l2, keys).await;
    // One shard of every key replaced in memcached by one that passes every
    // per-shard check (frame checksum recomputed) but holds wrong bytes.
    for Stored {
        node, skey, good, ..
    } in stored_shards(&f, &l2, keys).await
    {
        let bad = cache_tiers::testing::forge_shard(&good).expect("a framed shard");
        node.set_raw(&skey, bad).await.unwrap();
    }
    for round in 0..3 {
        check_all(
            &l2,
            keys,
            &format!("one forged shard per key, round {round}"),
        )
        .await;
    }
    let s = l2.shard_stats();
    // The forged shard is among the first four to arrive in most of these
    // 36 reads; each such read rebuilt a wrong value first, then the right one.
    assert!(s.failed_rebuilds > 0, "{s:?}");
    assert_eq!(s.corrupt, 0, "no shard fails its own checks: {s:?}");
}

/// Shard `idx` of `value` under `key`, made by a 4+1 tier over in-memory nodes.
async fn tier_shard_of(key: &str, idx: usize, value: Bytes) -> Bytes {
    let mems: Vec<Arc<cache_tiers::MemoryTier>> = (0..5)
        .map(|i| Arc::new(cache_tiers::MemoryTier::new(8 << 20).with_name(format!("m{i}"))))
        .collect();
    let nodes: Vec<Node> = mems.iter().map(|m| m.clone() as Node).collect();
    let t = ErasureCodedTier::builder(nodes).build().unwrap();
    let key = key.to_string();
    t.put(&key, value).await.unwrap();
    let skey = ErasureCodedTier::shard_key(&key, idx);
    Tier::get(&*mems[t.placement(&key)[idx]], &skey)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_skipped_for_a_while_then_retried() {
    let Some(mut server) = MemcachedServer::start(16) else {
        return;
    };
    let node = MemcachedNode::new(
        server.addr().to_string(),
        MemcachedConfig::default().with_down_backoff(Duration::from_millis(300)),
    );
    let k = "alive".to_string();
    Tier::put(&node, &k, Bytes::from_static(b"1"))
        .await
        .unwrap();
    server.stop();
    // The pooled connection breaks, then connecting fails: marked down.
    for _ in 0..3 {
        if node.is_down() {
            break;
        }
        assert!(Tier::get(&node, &k).await.is_err());
    }
    assert!(node.is_down());
    let e = Tier::get(&node, &k).await.unwrap_err();
    assert!(matches!(e, cache_tiers::Error::NodeDown { .. }), "{e}");
    server.restart();
    tokio::time::sleep(Duration::from_millis(350)).await;
    // The first operation after the backoff still fails at once and starts
    // a background probe; the probe's answer marks the node up.
    let e = Tier::get(&node, &k).await.unwrap_err();
    assert!(matches!(e, cache_tiers::Error::NodeDown { .. }), "{e}");
    let t0 = Instant::now();
    while node.is_down() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the probe never marked it up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Back (empty after the restart): a clean miss, then a stored value.
    assert_eq!(Tier::get(&node, &k).await.unwrap(), None);
    assert!(!node.is_down());
    Tier::put(&node, &k, Bytes::from_static(b"2"))
        .await
        .unwrap();
    assert_eq!(Tier::get(&node, &k).await.unwrap().unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_is_marked_down_by_its_timeouts_and_up_by_a_probe() {
    let Some(server) = MemcachedServer::start(16) else {
        return;
    };
    let timeout = Duration::from_millis(200);
    let node = Arc::new(MemcachedNode::new(
        server.addr().to_string(),
        MemcachedConfig::default()
            .with_timeouts(timeout, timeout)
            .with_down_backoff(Duration::from_millis(100)),
    ));
    let k = "alive".to_string();
    Tier::put(&*node, &k, Bytes::from_static(b"1"))
        .await
        .unwrap();
    // SIGSTOP: connections are accepted, nothing is answered.
    server.set_running(false);
    for _ in 0..2 {
        let e = Tier::get(&*node, &k).await.unwrap_err();
        assert!(matches!(e, cache_tiers::Error::Timeout { .. }), "{e}");
    }
    assert!(
        node.is_down(),
        "two timeouts in a row mark a hung node down"
    );
    // Now every operation fails at once, probes included (they run in the
    // background while the server stays hung).
    let t0 = Instant::now();
    for _ in 0..50 {
        let e = Tier::get(&*node, &k).await.unwrap_err();
        assert!(matches!(e, cache_tiers::Error::NodeDown { .. }), "{e}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(50 * 5 + 150),
        "operations on a down node waited: {:?}",
        t0.elapsed()
    );
    assert!(node.is_down(), "a hung server's probes time out");
    server.set_running(true);
    let t0 = Instant::now();
    while node.is_down() {
        let _ = Tier::get(&*node, &k).await; // lets a probe start
        assert!(t0.elapsed() < Duration::from_secs(10), "never marked up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(Tier::get(&*node, &k).await.unwrap().unwrap(), "1");
}
