//! Get latency of each tier, printed as one table (see `bench/tiers.sh`).
//!
//! Rows: MemoryTier hit, DiskTier hit, and the L2 over 5 local memcached
//! servers (512 KiB values) for 4-of-5 and 4-of-4, without and with one node
//! slowed by 20 ms through a delaying TCP proxy. Every L2 node sits behind a
//! proxy in all rows, so fault and no-fault rows differ only in the delay.
//! Samples per row: `LODE_BENCH_SAMPLES` (default 1000; MemoryTier 100x that).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_tiers::testing::{MemcachedServer, TcpProxy};
use cache_tiers::{
    DiskTier, ErasureCodedTier, MemcachedConfig, MemcachedNode, MemoryTier, Node, Tier, Tiered,
};

const VALUE: usize = 512 * 1024;

struct Row {
    name: String,
    samples: usize,
    p50: Duration,
    p99: Duration,
    note: String,
}

fn summarize(name: &str, mut lat: Vec<Duration>, note: String) -> Row {
    lat.sort_unstable();
    let at = |q: f64| lat[((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    Row {
        name: name.to_owned(),
        samples: lat.len(),
        p50: at(0.50),
        p99: at(0.99),
        note,
    }
}

fn value(i: u64) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(i);
    let mut v = vec![0u8; VALUE];
    rng.fill(&mut v);
    Bytes::from(v)
}

async fn measure(tier: &dyn Tier<String, Bytes>, keys: &[String], samples: usize) -> Vec<Duration> {
    for k in keys.iter().take(50) {
        let _ = tier.get(k).await;
    }
    let mut lat = Vec::with_capacity(samples);
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..samples {
        let k = &keys[rng.usize(..keys.len())];
        let t = Instant::now();
        let v = tier.get(k).await;
        lat.push(t.elapsed());
        assert!(
            matches!(v, Ok(Some(ref b)) if b.len() == VALUE),
            "bench get of {k} failed: {v:?}"
        );
    }
    lat
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let samples: usize = std::env::var("LODE_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rows = rt.block_on(run(samples));
    println!();
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at the end: {}", load.trim());
    }
    let reproduce = if std::env::var_os("LODE_BENCH_SAMPLES").is_some() {
        format!("LODE_BENCH_SAMPLES={samples} bench/tiers.sh")
    } else {
        "bench/tiers.sh".to_owned()
    };
    println!("reproduce: {reproduce}  (release build; needs memcached on PATH)");
    println!();
    println!("| tier (512 KiB values, sequential gets) | samples | p50 | p99 | note |");
    println!("|---|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name,
            r.samples,
            fmt(r.p50),
            fmt(r.p99),
            r.note
        );
    }
    let find = |n: &str| rows.iter().find(|r| r.name == n);
    println!();
    if let Some(m) = find("MemoryTier hit") {
        let ok = m.p50 < Duration::from_micros(5);
        println!(
            "target MemoryTier hit p50 < 5 µs: {} ({})",
            if ok { "met" } else { "NOT met" },
            fmt(m.p50)
        );
    }
    if let (Some(a), Some(b)) = (
        find("L2 4-of-5, no fault"),
        find("L2 4-of-5, 1 node +20 ms"),
    ) {
        let ratio = b.p99.as_secs_f64() / a.p99.as_secs_f64();
        println!(
            "target 4-of-5 p99 with a slow node within 1.5x of no-fault p99: {} ({ratio:.2}x)",
            if ratio <= 1.5 { "met" } else { "NOT met" }
        );
    }
    if let (Some(a), Some(b)) = (
        find("L2 4-of-4, no fault"),
        find("L2 4-of-4, 1 node +20 ms"),
    ) {
        // Striping cannot avoid the slow node: its p99 should grow by about 20 ms.
        let shows = b.p99 >= a.p99 + Duration::from_millis(15);
        println!(
            "4-of-4 p99 with a slow node: {} vs {} without ({:.1}x): the delay {}",
            fmt(b.p99),
            fmt(a.p99),
            b.p99.as_secs_f64() / a.p99.as_secs_f64(),
            if shows { "shows" } else { "does NOT show" }
        );
    }
}

async fn run(samples: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let keys: Vec<String> = (0..64)
        .map(|i| format!("{:064x}", i * 0x9e37_79b9_u64))
        .collect();
    let values: Vec<Bytes> = (0..keys.len() as u64).map(value).collect();

    // L1 memory.
    let mem = MemoryTier::new(256 << 20);
    for (k, v) in keys.iter().zip(&values) {
        Tier::put(&mem, k, v.clone()).await.expect("memory put");
    }
    let lat = measure(&mem, &keys, samples * 100).await;
    rows.push(summarize(
        "MemoryTier hit",
        lat,
        "through the async Tier trait".into(),
    ));
    let stacked: Tiered<String, Bytes> = Tiered::builder()
        .tier(mem)
        .tier(MemoryTier::new(1 << 20).with_name("below"))
        .build()
        .expect("tiered");
    let mut lat = Vec::with_capacity(samples * 100);
    for i in 0..samples * 100 {
        let k = &keys[i % keys.len()];
        let t = Instant::now();
        let v = stacked.get(k).await;
        lat.push(t.elapsed());
        assert!(matches!(v, Ok(Some((_, 0)))), "tiered get of {k}: {v:?}");
    }
    rows.push(summarize(
        "Tiered hit in its MemoryTier",
        lat,
        "with stats and latency histogram".into(),
    ));

    // L1 disk.
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = DiskTier::open(dir.path(), 1 << 30)
        .await
        .expect("disk open");
    for (k, v) in keys.iter().zip(&values) {
        Tier::put(&disk, k, v.clone()).await.expect("disk put");
    }
    let lat = measure(&disk, &keys, samples).await;
    rows.push(summarize(
        "DiskTier hit",
        lat,
        "page cache warm; read + checksum".into(),
    ));

    // L2 over 5 memcached servers, each behind a proxy.
    let servers: Option<Vec<MemcachedServer>> =
        (0..5).map(|_| MemcachedServer::start(128)).collect();
    let Some(servers) = servers else {
        rows.push(Row {
            name: "L2 rows".into(),
            samples: 0,
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            note: "skipped: memcached not installed".into(),
        });
        return rows;
    };
    let mut proxies = Vec::new();
    for s in &servers {
        proxies.push(TcpProxy::start(s.addr()).await.expect("proxy"));
    }
    let nodes: Vec<Node> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Arc::new(
                MemcachedNode::new(
                    p.addr().to_string(),
                    MemcachedConfig::default().with_max_connections(8),
                )
                .with_name(format!("mc{i}")),
            ) as Node
        })
        .collect();
    let l2_45 = ErasureCodedTier::builder(nodes.clone())
        .name("l2-4of5")
        .build()
        .expect("l2");
    let l2_44 = ErasureCodedTier::builder(
        nodes
            .iter()
            .map(|n| {
                // Same servers, another key space, so the two layouts do not overwrite each other.
                Arc::new(PrefixedNode(Arc::clone(n))) as Node
            })
            .collect(),
    )
    .name("l2-4of4")
    .parity_shards(0)
    .build()
    .expect("l2");
    for (k, v) in keys.iter().zip(&values) {
        l2_45.put(k, v.clone()).await.expect("l2 put");
        l2_44.put(k, v.clone()).await.expect("l2 put");
    }
    // Slow the node that holds the most data shards of the 4-of-4 layout,
    // so the fault is seen by most keys in both layouts.
    let mut holds = [0usize; 5];
    for k in &keys {
        for &n in &l2_44.placement(k) {
            holds[n] += 1;
        }
    }
    let slow = (0..5).max_by_key(|&i| holds[i]).unwrap_or(0);

    // Machines here are shared and noisy: measure the four L2 rows in
    // interleaved rounds, so that drift in background load hits them alike.
    // Baseline: one whole 512 KiB value from one memcached node (what plain
    // consistent hashing without coding would read), through a proxy too.
    let direct_node = {
        let fast = (0..5).find(|&i| i != slow).unwrap_or(0);
        MemcachedNode::new(
            proxies[fast].addr().to_string(),
            MemcachedConfig::default().with_key_prefix("whole-"),
        )
    };
    for (k, v) in keys.iter().zip(&values) {
        Tier::put(&direct_node, k, v.clone())
            .await
            .expect("baseline put");
    }
    let rounds = 5;
    let per_round = samples.div_ceil(rounds);
    let mut lat: [Vec<Duration>; 4] = Default::default();
    let mut whole = Vec::new();
    let mut fault_recon = [0u64; 2];
    for _ in 0..rounds {
        proxies[slow].set_delay(Duration::ZERO);
        whole.extend(measure(&direct_node, &keys, per_round).await);
        lat[0].extend(measure(&l2_45, &keys, per_round).await);
        lat[1].extend(measure(&l2_44, &keys, per_round).await);
        proxies[slow].set_delay(Duration::from_millis(20));
        let r = [
            l2_45.shard_stats().reconstructions,
            l2_44.shard_stats().reconstructions,
        ];
        lat[2].extend(measure(&l2_45, &keys, per_round).await);
        lat[3].extend(measure(&l2_44, &keys, per_round).await);
        fault_recon[0] += l2_45.shard_stats().reconstructions - r[0];
        fault_recon[1] += l2_44.shard_stats().reconstructions - r[1];
    }
    let [a, b, c, d] = lat;
    rows.push(summarize(
        "baseline: 1 memcached node, whole value",
        whole,
        "no coding; via a proxy".into(),
    ));
    let base = "5 memcached nodes via proxies".to_string();
    rows.push(summarize("L2 4-of-5, no fault", a, base.clone()));
    rows.push(summarize("L2 4-of-4, no fault", b, base));
    let slow_note = |recon: u64| {
        format!(
            "slow node holds a shard of {}/{} keys; {recon} reconstructions (incl. warm-up gets)",
            holds[slow],
            keys.len()
        )
    };
    rows.push(summarize(
        "L2 4-of-5, 1 node +20 ms",
        c,
        slow_note(fault_recon[0]),
    ));
    rows.push(summarize(
        "L2 4-of-4, 1 node +20 ms",
        d,
        slow_note(fault_recon[1]),
    ));
    rows
}

/// A node view that stores under a `4of4/` key prefix.
struct PrefixedNode(Node);

#[async_trait::async_trait]
impl Tier<String, Bytes> for PrefixedNode {
    fn name(&self) -> &str {
        self.0.name()
    }
    async fn get(&self, key: &String) -> cache_tiers::Result<Option<Bytes>> {
        self.0.get(&format!("4of4-{key}")).await
    }
    async fn put(&self, key: &String, value: Bytes) -> cache_tiers::Result<()> {
        self.0.put(&format!("4of4-{key}"), value).await
    }
    async fn remove(&self, key: &String) -> cache_tiers::Result<()> {
        self.0.remove(&format!("4of4-{key}")).await
    }
}
