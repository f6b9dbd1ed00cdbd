//! Criterion micro-benchmarks: MemoryTier hits and the L2 shard codec
//! (put = encode 4+1, get = rebuild) on in-memory nodes, 512 KiB values.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::sync::Arc;

use bytes::Bytes;
use cache_tiers::{ErasureCodedTier, MemoryTier, Node, Tier};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let value = Bytes::from(vec![0x5au8; 512 * 1024]);
    let key = "k".to_string();

    let mem = MemoryTier::new(64 << 20);
    rt.block_on(Tier::put(&mem, &key, value.clone()))
        .expect("put");
    c.bench_function("memory_tier_hit", |b| {
        b.iter(|| rt.block_on(Tier::get(&mem, &key)).expect("get"));
    });

    let nodes: Vec<Node> = (0..5)
        .map(|i| Arc::new(MemoryTier::new(64 << 20).with_name(format!("n{i}"))) as Node)
        .collect();
    let l2 = ErasureCodedTier::builder(nodes).build().expect("l2");
    let mut g = c.benchmark_group("l2_4of5_in_memory_nodes");
    g.throughput(Throughput::Bytes(value.len() as u64));
    g.bench_function("put_512k", |b| {
        b.iter(|| rt.block_on(l2.put(&key, value.clone())).expect("put"));
    });
    g.bench_function("get_512k", |b| {
        b.iter(|| rt.block_on(l2.get(&key)).expect("get"));
    });
    g.finish();
}

criterion_group!(name = codec; config = Criterion::default().sample_size(30); targets = benches);
criterion_main!(codec);
