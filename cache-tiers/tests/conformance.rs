//! Every tier runs the same conformance suite.

use std::sync::Arc;

use bytes::Bytes;
use cache_tiers::testing::{MemcachedServer, MotoServer, conformance};
use cache_tiers::{
    DiskTier, ErasureCodedTier, MemcachedConfig, MemcachedNode, MemoryTier, Node, ObjectStoreTier,
    S3Config, Tier,
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
async fn object_store_in_memory() {
    conformance::run(Arc::new(ObjectStoreTier::in_memory("chunks/")), "", exp()).await;
}

#[tokio::test]
async fn object_store_local_dir() {
    let dir = tempfile::tempdir().unwrap();
    let t = ObjectStoreTier::local(dir.path(), "chunks/").unwrap();
    conformance::run(Arc::new(t), "", exp()).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_node() {
    let Some(server) = MemcachedServer::start(64) else {
        return;
    };
    let node = MemcachedNode::new(server.addr().to_string(), MemcachedConfig::default());
    conformance::run(Arc::new(node), "", exp()).await;
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
