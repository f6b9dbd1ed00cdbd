//! Every tier runs the same conformance suite.

//!
//! Each tier that can fail also runs `conformance::run_errors` on a broken
//! instance (server stopped, directory replaced by a file, nodes failing):
//! its errors must name the tier and carry the key. `MemoryTier` cannot fail.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_tiers::testing::{FaultyTier, MemcachedServer, MotoServer, conformance, free_port};
use cache_tiers::{
    Delayed, DiskTier, ErasureCodedTier, MemcachedConfig, MemcachedNode, MemoryTier, Node,
    ObjectStoreTier, RetryPolicy, S3Config, Tier,
};

fn exp() -> conformance::Expectations {
    conformance::Expectations::default()
}

#[tokio::test]
async fn memory_tier() {
    conformance::run(Arc::new(MemoryTier::new(64 << 20)), "", exp()).await;
}

#[tokio::test]
async fn disk_tier() {
    let dir = tempfile::tempdir().unwrap();
    let t = DiskTier::open(dir.path(), 64 << 20).await.unwrap();
    conformance::run(Arc::new(t.clone()), "", exp()).await;
    // What was written survives a reopen.
    let reopened = DiskTier::open(dir.path(), 64 << 20).await.unwrap();
    assert_eq!(reopened.used_bytes(), t.used_bytes());
    let k = "size-1000".to_string();
    assert_eq!(
        Tier::get(&reopened, &k).await.unwrap().map(|v| v.len()),
        Some(1000)
    );
}

#[tokio::test]
async fn disk_tier_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let t = DiskTier::open(&cache, 64 << 20).await.unwrap();
    // The cache directory is replaced by a file under the open tier.
    std::fs::remove_dir_all(&cache).unwrap();
    std::fs::write(&cache, b"not a directory").unwrap();
    conformance::run_errors(Arc::new(t), "").await;
}

/// A fault-injecting node that fails every operation.
fn failing(name: &str) -> Arc<FaultyTier> {
    let f = Arc::new(FaultyTier::new(Arc::new(MemoryTier::new(1 << 20)), name));
    f.set_fail(true);
    f
}

#[tokio::test]
async fn delayed_tier() {
    let inner: Arc<dyn Tier<String, Bytes>> = Arc::new(MemoryTier::new(64 << 20));
    let t = Delayed::new(inner, Duration::from_millis(1));
    conformance::run(Arc::new(t), "", exp()).await;
    let t = Delayed::new(failing("faulty") as _, Duration::from_millis(1));
    conformance::run_errors(Arc::new(t), "").await;
}

#[tokio::test]
async fn object_store_in_memory() {
    conformance::run(Arc::new(ObjectStoreTier::in_memory("chunks/")), "", exp()).await;
}

#[tokio::test]
async fn object_store_local_dir() {
    let dir = tempfile::tempdir().unwrap();
    let t = ObjectStoreTier::local(dir.path(), "chunks/").unwrap();
    conformance::run(Arc::new(t), "", exp()).await;
    // "broken/" is a file: nothing can be stored under it.
    std::fs::write(dir.path().join("broken"), b"not a directory").unwrap();
    let t = ObjectStoreTier::local(dir.path(), "broken/").unwrap();
    conformance::run_errors(Arc::new(t), "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_s3_on_moto() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("lode-test");
    let cfg = S3Config::new(moto.endpoint(), "lode-test").with_credentials("test", "test");
    let t = ObjectStoreTier::s3(&cfg, "chunks/").unwrap();
    conformance::run(Arc::new(t), "", exp()).await;
    let mut moto = moto;
    moto.stop();
    let cfg = cfg.with_timeouts(Duration::from_secs(2), Duration::from_millis(500));
    let t = ObjectStoreTier::s3(&cfg, "chunks/")
        .unwrap()
        .with_retry(RetryPolicy::new(
            2,
            Duration::from_millis(10),
            Duration::from_millis(20),
        ));
    conformance::run_errors(Arc::new(t), "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_node() {
    let Some(server) = MemcachedServer::start(64) else {
        return;
    };
    let node = MemcachedNode::new(server.addr().to_string(), MemcachedConfig::default());
    conformance::run(Arc::new(node), "", exp()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_node_errors() {
    // Nothing listens on this port.
    let addr = format!("127.0.0.1:{}", free_port());
    let node = MemcachedNode::new(addr, MemcachedConfig::default()).with_name("mc-dead");
    conformance::run_errors(Arc::new(node), "").await;
}

#[tokio::test]
async fn erasure_coded_over_memory_nodes() {
    for (k, m) in [(4, 1), (4, 0), (3, 2)] {
        let nodes: Vec<Node> = (0..6)
            .map(|i| Arc::new(MemoryTier::new(64 << 20).with_name(format!("n{i}"))) as Node)
            .collect();
        let t = ErasureCodedTier::builder(nodes)
            .data_shards(k)
            .parity_shards(m)
            .build()
            .unwrap();
        conformance::run(Arc::new(t), &format!("{k}+{m}-"), exp()).await;
    }
}

#[tokio::test]
async fn erasure_coded_errors() {
    let nodes: Vec<Node> = (0..5).map(|i| failing(&format!("n{i}")) as Node).collect();
    let t = ErasureCodedTier::builder(nodes).name("l2").build().unwrap();
    conformance::run_errors(Arc::new(t), "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_coded_over_memcached() {
    let servers: Vec<MemcachedServer> = match (0..5).map(|_| MemcachedServer::start(64)).collect() {
        Some(s) => s,
        None => return,
    };
    let nodes: Vec<Node> = servers
        .iter()
        .map(|s| {
            Arc::new(MemcachedNode::new(
                s.addr().to_string(),
                MemcachedConfig::default(),
            )) as Node
        })
        .collect();
    let t = ErasureCodedTier::builder(nodes).build().unwrap();
    conformance::run(Arc::new(t), "", exp()).await;
}

#[tokio::test]
async fn dyn_tier_of_bytes_is_object_safe() {
    let tiers: Vec<Arc<dyn Tier<String, Bytes>>> = vec![
        Arc::new(MemoryTier::new(1 << 20)),
        Arc::new(ObjectStoreTier::in_memory("")),
    ];
    let names: Vec<&str> = tiers.iter().map(|t| t.name()).collect();
    assert_eq!(names, ["memory", "object-store"]);
}
