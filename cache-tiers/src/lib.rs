//! A generic multi-tier cache: L1 in memory and on disk, L2 erasure coded
//! over a memcached fleet, L3 an object store, composed into one read path.
//!
//! It follows the read path of AWS Lambda's container loading (Brooker et
//! al., USENIX ATC'23): most reads hit the worker's own memory or disk, most
//! of the rest hit a shared cache fleet that stores each value erasure coded
//! `k`-of-`n` (4-of-5 by default) and answers as soon as any `k` nodes reply,
//! so a slow or lost node costs neither latency nor hit rate; the object
//! store is the authority. The crate knows nothing of what it caches.
//!
//! # Main types
//! - [`Tier`]: the object-safe async trait every level implements (get, put,
//!   remove; the contract is in its docs and checked by one conformance
//!   suite, `testing::conformance`, that every tier runs).
//! - [`Tiered`]: tiers read in order, upper tiers filled on a lower hit
//!   ([`FillPolicy`]), concurrent misses of one key coalesced into one fetch,
//!   per-tier [`TierStats`] with latency percentiles readable at any time.
//! - [`MemoryTier`], [`DiskTier`]: L1, bounded in bytes, LRU.
//! - [`ErasureCodedTier`] over [`MemcachedNode`]s: L2.
//! - [`ObjectStoreTier`]: L3 on a local directory, memory or S3
//!   ([`S3Config`]: explicit endpoint and credentials, or
//!   [`S3Config::from_env`] for region, endpoint, credentials and session
//!   token from the standard `AWS_*` environment variables).
//! - [`QueuedPuts`]: puts (fills) through a bounded queue that drops when
//!   full, so a slow shared cache never delays the caller.
//! - [`Delayed`]: adds a fixed latency to every get of a tier (for
//!   benchmarks and fault tests, e.g. a local store that behaves like S3).
//! - [`CacheKey`]: what a key must offer (a stable byte form).
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use cache_tiers::{FillPolicy, MemoryTier, ObjectStoreTier, Tier, Tiered};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cache_tiers::Result<()> {
//! let store = ObjectStoreTier::in_memory("chunks/");
//! let key = "0f1e2d".to_string();
//! Tier::put(&store, &key, Bytes::from_static(b"chunk bytes")).await?;
//!
//! let cache: Tiered<String, Bytes> = Tiered::builder()
//!     .tier(MemoryTier::new(64 << 20))
//!     .tier(store)
//!     .fill_policy(FillPolicy::All)
//!     .build()?;
//!
//! let (value, tier) = cache.get(&key).await?.expect("stored above");
//! assert_eq!((value.as_ref(), tier), (&b"chunk bytes"[..], 1)); // from the store
//! let (_, tier) = cache.get(&key).await?.expect("filled");
//! assert_eq!(tier, 0); // now from memory
//! assert_eq!(cache.stats()[0].hits, 1);
//! # Ok(()) }
//! ```
//!
//! The full Lambda-style stack (needs memcached servers and an S3 endpoint):
//! ```no_run
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use cache_tiers::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cache_tiers::Result<()> {
//! let nodes: Vec<Node> = (1..=5)
//!     .map(|i| format!("cache-{i}.example:11211"))
//!     .map(|a| Arc::new(MemcachedNode::new(a, MemcachedConfig::default())) as Node)
//!     .collect();
//! let l2 = ErasureCodedTier::builder(nodes).name("l2").build()?; // 4 data + 1 parity
//! let s3 = S3Config::new("https://s3.us-east-1.amazonaws.com", "my-chunks");
//! let cache: Tiered<String, Bytes> = Tiered::builder()
//!     .tier(MemoryTier::new(1 << 30))
//!     .tier(DiskTier::open("/var/cache/lode", 20 << 30).await?)
//!     .tier(l2)
//!     .tier(ObjectStoreTier::s3(&s3, "chunks/")?)
//!     .build()?;
//! if let Some((chunk, tier)) = cache.get(&"ab12...".to_string()).await? {
//!     println!("{} bytes from tier {tier}", chunk.len());
//! }
//! for s in cache.stats() {
//!     println!("{}: {} hits, p99 {:?}", s.name, s.hits, s.get_latency.p99);
//! }
//! # Ok(()) }
//! ```
//!
//! # Runtime
//! Every tier is async and must run inside a [tokio] runtime; a
//! current-thread runtime is enough. Some spawn tasks, so they panic when
//! polled outside one (tokio's "there is no reactor running"):
//! - [`ErasureCodedTier::get`](Tier::get) sends each shard request as its own
//!   `tokio::spawn`ed task, so requests still running when `k` shards have
//!   arrived finish in the background.
//! - [`Tiered`] with [`background_fill(true)`](TieredBuilder::background_fill)
//!   fills the upper tiers in a spawned task.
//! - [`ErasureCodedTier::put`](Tier::put) also spawns one task per shard,
//!   and [`QueuedPuts`] spawns its worker task on the first put.
//! - [`DiskTier`] does its file I/O with `spawn_blocking` (the runtime's
//!   blocking pool).
//! - [`MemcachedNode`], [`ObjectStoreTier`] and [`Delayed`] use tokio timers
//!   and sockets: build the runtime with `enable_all()` (as `#[tokio::main]`
//!   does).
//!
//! [tokio]: https://docs.rs/tokio
//!
//! Keys: implement [`CacheKey`] for your own key type (a newtype around a
//! digest is typical) or use `String`.
//!
//! # Features
//! - `disk` (default): [`DiskTier`].
//! - `object-store` (default): [`ObjectStoreTier`] (`object_store` with the
//!   `aws` and `fs` features).
//! - `memcached` (default): [`MemcachedNode`] (`async-memcached`).
//! - `testing`: the conformance suite, a fault-injecting tier wrapper, a
//!   delaying/blocking TCP proxy and launchers for `memcached` and
//!   `moto_server` test servers.

mod delayed;
mod error;
mod key;
mod memory;
mod queued;
mod stats;
mod tier;
mod tiered;

#[cfg(feature = "disk")]
mod disk;
mod erasure;
#[cfg(feature = "memcached")]
mod memcached;
#[cfg(feature = "object-store")]
mod object;

#[cfg(feature = "testing")]
pub mod testing;

pub use delayed::Delayed;
#[cfg(feature = "disk")]
pub use disk::DiskTier;
pub use erasure::{ErasureCodedBuilder, ErasureCodedTier, HedgeBudget, Node, ShardStats};
pub use error::{BoxError, Error, Result};
pub use key::{CacheKey, Weight, default_storage_name};
#[cfg(feature = "memcached")]
pub use memcached::{MemcachedConfig, MemcachedNode};
pub use memory::MemoryTier;
#[cfg(feature = "object-store")]
pub use object::{ObjectInfo, ObjectStoreTier, RetryPolicy, S3Config};
pub use queued::{QueueStats, QueuedPuts};
pub use stats::{LatencyHistogram, LatencySummary, TierStats};
pub use tier::{Claim, Tier};
pub use tiered::{FillPolicy, MarkerStats, Tiered, TieredBuilder};
