//! Reading through a stack of tiers.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::key::{CacheKey, Weight};
use crate::stats::{TierCounters, TierStats};
use crate::{Claim, Error, Result, Tier};

/// Which upper tiers receive a value found in a lower tier.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FillPolicy {
    /// Every tier above the one that answered (the usual read-through cache).
    #[default]
    All,
    /// No tier: reads never write.
    None,
    /// Only these tier indices (0 = top), where they are above the tier that answered.
    Only(Vec<usize>),
}

impl FillPolicy {
    fn fills(&self, tier: usize, answered: usize) -> bool {
        tier < answered
            && match self {
                FillPolicy::All => true,
                FillPolicy::None => false,
                FillPolicy::Only(list) => list.contains(&tier),
            }
    }
}

/// What a coalesced fetch yields to every waiter.
type SharedFetch<V> = Shared<BoxFuture<'static, Result<Option<(V, usize)>, Arc<Error>>>>;

struct Slot<K, V> {
    tier: Arc<dyn Tier<K, V>>,
    counters: TierCounters,
}

struct Inner<K, V> {
    tiers: Vec<Slot<K, V>>,
    fill: FillPolicy,
    background_fill: bool,
    coalesce: bool,
    inflight: Mutex<HashMap<K, SharedFetch<V>>>,
    /// Gets that joined another get's fetch.
    coalesced: std::sync::atomic::AtomicU64,
    /// How long a get waits for another client's fetch (see `fetch_markers`).
    markers: Option<Duration>,
    marker_counters: MarkerCounters,
}

#[derive(Default)]
struct MarkerCounters {
    won: AtomicU64,
    waited: AtomicU64,
    filled: AtomicU64,
    fell_back: AtomicU64,
}

/// Counters of cross-client fetch markers
/// ([`TieredBuilder::fetch_markers`]) of a [`Tiered`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MarkerStats {
    /// Misses whose marker this client set (it fetched from below).
    pub won: u64,
    /// Misses that found another client's marker and waited.
    pub waited: u64,
    /// Of those, the waits that ended with the value filled by the other client.
    pub filled: u64,
    /// Of those, the waits that timed out (this client fetched from below).
    pub fell_back: u64,
}

/// Bounds of the wait for a claim (a memcached `add`, well under a
/// millisecond when healthy): four times the p99 of the tier's gets, within
/// these. A slower answer means the node is in trouble, and the get goes on
/// to the tiers below without coalescing.
const CLAIM_TIMEOUT_MIN: Duration = Duration::from_millis(50);
const CLAIM_TIMEOUT_MAX: Duration = Duration::from_millis(250);

/// Tiers read in order, top (fastest) first; the last one is usually the authority.
///
/// - A get asks each tier in turn and returns the first hit with the index of
///   the tier that answered. An error in a tier is counted and the read goes
///   on to the next tier; only when no tier answers and the last tier failed
///   is the last error returned.
/// - On a hit in tier `i`, the tiers above `i` chosen by the [`FillPolicy`]
///   are filled (awaited, or in the background with
///   [`TieredBuilder::background_fill`]); fill errors are counted, not returned.
/// - Concurrent gets of one key that miss the top tier share one fetch
///   through the lower tiers (single flight).
/// - [`stats`](Tiered::stats) reads per-tier hits, misses, errors, bytes and
///   latency percentiles at any time.
/// - **Runtime**: with [`TieredBuilder::background_fill`] a hit in a lower
///   tier `tokio::spawn`s the fill, so gets must run inside a tokio runtime
///   (they panic outside one); the tiers themselves need one anyway (see the
///   crate docs).
///
/// Cloning is cheap and shares everything.
pub struct Tiered<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Tiered<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: CacheKey, V: Send + Sync + 'static> std::fmt::Debug for Tiered<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.inner.tiers.iter().map(|s| s.tier.name()).collect();
        f.debug_struct("Tiered")
            .field("tiers", &names)
            .field("fill", &self.inner.fill)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Tiered`].
pub struct TieredBuilder<K, V> {
    tiers: Vec<Arc<dyn Tier<K, V>>>,
    fill: FillPolicy,
    background_fill: bool,
    coalesce: bool,
    markers: Option<Duration>,
}

impl<K, V> Default for TieredBuilder<K, V> {
    fn default() -> Self {
        Self {
            tiers: Vec::new(),
            fill: FillPolicy::All,
            background_fill: false,
            coalesce: true,
            markers: None,
        }
    }
}

impl<K, V> TieredBuilder<K, V>
where
    K: CacheKey,
    V: Clone + Weight + Send + Sync + 'static,
{
    /// Adds a tier below the ones added so far.
    pub fn tier(mut self, tier: impl Tier<K, V> + 'static) -> Self {
        self.tiers.push(Arc::new(tier));
        self
    }

    /// Adds a shared tier below the ones added so far.
    pub fn tier_arc(mut self, tier: Arc<dyn Tier<K, V>>) -> Self {
        self.tiers.push(tier);
        self
    }

    /// Sets which tiers are filled on a lower hit (default [`FillPolicy::All`]).
    pub fn fill_policy(mut self, fill: FillPolicy) -> Self {
        self.fill = fill;
        self
    }

    /// Fill upper tiers in a spawned task instead of before returning
    /// (default `false`). The fill is `tokio::spawn`ed: gets must run inside
    /// a tokio runtime, or they panic.
    pub fn background_fill(mut self, yes: bool) -> Self {
        self.background_fill = yes;
        self
    }

    /// Coalesce concurrent misses of one key into one fetch (default `true`).
    pub fn coalesce(mut self, yes: bool) -> Self {
        self.coalesce = yes;
        self
    }

    /// Coalesce misses across clients of a shared cache tier (default off):
    /// after a miss in a tier that keeps markers ([`Tier::claim`], e.g. the
    /// erasure-coded L2 over memcached), a get claims the fetch with a
    /// short-lived "being fetched" marker. The client that wins fetches from
    /// the tiers below (and its fill reaches the shared tier); the others
    /// poll the shared tier with backoff (2 ms doubling up to 20 ms) for up
    /// to `wait`, then fetch from below themselves, so a client that died
    /// holding a marker costs the others at most `wait`. Markers expire by
    /// themselves after about `wait` (memcached: rounded up to whole
    /// seconds, plus one). A claim slower than four times the p99 of the
    /// tier's gets (within 50..250 ms) is abandoned and the get fetches from
    /// below. The claim and the polls are spawned tasks: gets need a tokio
    /// runtime. `None` turns this off.
    pub fn fetch_markers(mut self, wait: Option<Duration>) -> Self {
        self.markers = wait;
        self
    }

    /// Builds; fails without tiers or with a fill index out of range.
    pub fn build(self) -> Result<Tiered<K, V>> {
        if self.tiers.is_empty() {
            return Err(Error::InvalidConfig {
                reason: "a Tiered cache needs at least one tier".into(),
            });
        }
        if let FillPolicy::Only(list) = &self.fill
            && let Some(bad) = list.iter().find(|&&i| i >= self.tiers.len())
        {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "fill policy names tier {bad}, but there are {} tiers",
                    self.tiers.len()
                ),
            });
        }
        Ok(Tiered {
            inner: Arc::new(Inner {
                tiers: self
                    .tiers
                    .into_iter()
                    .map(|tier| Slot {
                        tier,
                        counters: TierCounters::default(),
                    })
                    .collect(),
                fill: self.fill,
                background_fill: self.background_fill,
                coalesce: self.coalesce,
                inflight: Mutex::new(HashMap::new()),
                coalesced: Default::default(),
                markers: self.markers,
                marker_counters: MarkerCounters::default(),
            }),
        })
    }
}

impl<K, V> Tiered<K, V>
where
    K: CacheKey,
    V: Clone + Weight + Send + Sync + 'static,
{
    /// Starts a builder.
    pub fn builder() -> TieredBuilder<K, V> {
        TieredBuilder::default()
    }

    /// The value of `key` and the index of the tier that answered (0 = top),
    /// or `None` when no tier has it.
    pub async fn get(&self, key: &K) -> Result<Option<(V, usize)>> {
        // The top tier is asked without coalescing: its hits are the common
        // case and must stay cheap.
        let first = self.inner.get_from(0, key).await;
        if let Ok(Some(v)) = first {
            return Ok(Some((v, 0)));
        }
        let first_err = first.err();
        if self.inner.tiers.len() == 1 {
            return match first_err {
                Some(e) => Err(e),
                None => Ok(None),
            };
        }
        if !self.inner.coalesce {
            return Arc::clone(&self.inner).fetch_lower(key.clone()).await;
        }
        let fetch = {
            let mut map = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match map.get(key) {
                Some(f) => {
                    self.inner.coalesced.fetch_add(1, Relaxed);
                    f.clone()
                }
                None => {
                    let inner = Arc::clone(&self.inner);
                    let k = key.clone();
                    let f = async move {
                        let r = Arc::clone(&inner).fetch_lower(k.clone()).await;
                        inner
                            .inflight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&k);
                        r.map_err(Arc::new)
                    }
                    .boxed()
                    .shared();
                    map.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        fetch.await.map_err(|source| match Arc::try_unwrap(source) {
            Ok(e) => e,
            Err(source) => Error::Coalesced {
                key: key.storage_name().into_owned(),
                source,
            },
        })
    }

    /// Puts `value` into every tier (write-through), lowest first so that the
    /// authority has it before any cache does. Fails on the first error.
    pub async fn put(&self, key: &K, value: V) -> Result<()> {
        for slot in self.inner.tiers.iter().rev() {
            let r = slot.tier.put(key, value.clone()).await;
            slot.counters.fills.fetch_add(1, Relaxed);
            match r {
                Ok(()) => {
                    slot.counters
                        .bytes_written
                        .fetch_add(value.weight() as u64, Relaxed);
                }
                Err(e) => {
                    slot.counters.fill_errors.fetch_add(1, Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Removes `key` from every tier; returns the first error after trying all.
    pub async fn remove(&self, key: &K) -> Result<()> {
        let mut first_err = None;
        for slot in &self.inner.tiers {
            if let Err(e) = slot.tier.remove(key).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Per-tier statistics, top first.
    pub fn stats(&self) -> Vec<TierStats> {
        self.inner
            .tiers
            .iter()
            .enumerate()
            .map(|(i, s)| s.counters.snapshot(i, s.tier.name()))
            .collect()
    }

    /// Counters of cross-client fetch markers ([`TieredBuilder::fetch_markers`]).
    pub fn marker_stats(&self) -> MarkerStats {
        let c = &self.inner.marker_counters;
        MarkerStats {
            won: c.won.load(Relaxed),
            waited: c.waited.load(Relaxed),
            filled: c.filled.load(Relaxed),
            fell_back: c.fell_back.load(Relaxed),
        }
    }

    /// How many gets joined a fetch already under way for their key
    /// instead of fetching themselves.
    pub fn coalesced(&self) -> u64 {
        self.inner.coalesced.load(Relaxed)
    }

    /// Clears the latency histograms and counters.
    pub fn reset_stats(&self) {
        for s in &self.inner.tiers {
            let c = &s.counters;
            for a in [
                &c.hits,
                &c.misses,
                &c.errors,
                &c.bytes_read,
                &c.fills,
                &c.fill_errors,
                &c.bytes_written,
            ] {
                a.store(0, Relaxed);
            }
            c.get_latency.reset();
        }
    }

    /// The tiers, top first.
    pub fn tiers(&self) -> Vec<Arc<dyn Tier<K, V>>> {
        self.inner
            .tiers
            .iter()
            .map(|s| Arc::clone(&s.tier))
            .collect()
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Clone + Weight + Send + Sync + 'static,
{
    async fn get_from(&self, i: usize, key: &K) -> Result<Option<V>> {
        let slot = &self.tiers[i];
        let start = Instant::now();
        let r = slot.tier.get(key).await;
        slot.counters.get_latency.record(start.elapsed());
        match &r {
            Ok(Some(v)) => {
                slot.counters.hits.fetch_add(1, Relaxed);
                slot.counters
                    .bytes_read
                    .fetch_add(v.weight() as u64, Relaxed);
            }
            Ok(None) => {
                slot.counters.misses.fetch_add(1, Relaxed);
            }
            Err(e) => {
                slot.counters.errors.fetch_add(1, Relaxed);
                // Too few cache nodes answered: the nodes log their own
                // state changes once, so this is not worth a line per key.
                if matches!(e, Error::Unavailable { .. }) {
                    tracing::debug!(
                        tier = slot.tier.name(),
                        error = e as &dyn std::error::Error,
                        "tier get failed; trying the next tier"
                    );
                } else {
                    tracing::warn!(
                        tier = slot.tier.name(),
                        error = e as &dyn std::error::Error,
                        "tier get failed; trying the next tier"
                    );
                }
            }
        }
        r
    }

    /// Tiers 1.. in order, then fills (tier 0 missed already).
    async fn fetch_lower(self: Arc<Self>, key: K) -> Result<Option<(V, usize)>> {
        if let Some(v) = self.wait_for_other(0, &key).await {
            return Ok(Some((v, 0)));
        }
        let mut last_err = None;
        for i in 1..self.tiers.len() {
            match self.get_from(i, &key).await {
                Ok(Some(v)) => {
                    self.fill_above(i, &key, &v).await;
                    return Ok(Some((v, i)));
                }
                Ok(None) => last_err = None,
                Err(e) => last_err = Some(e),
            }
            if let Some(v) = self.wait_for_other(i, &key).await {
                self.fill_above(i, &key, &v).await;
                return Ok(Some((v, i)));
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// After a miss in tier `i` (not the last): claims the fetch with a
    /// marker; when another client holds it, polls tier `i` until its value
    /// appears or the wait is over (`None`: fetch from below).
    async fn wait_for_other(&self, i: usize, key: &K) -> Option<V> {
        let wait = self.markers?;
        if i + 1 >= self.tiers.len() {
            return None;
        }
        let tier = &self.tiers[i].tier;
        let c = &self.marker_counters;
        // Spawned, so that a claim this get stops waiting for still ends
        // (answer or timeout) and a hung node's circuit breaker sees it.
        let claim = {
            let (tier, key) = (Arc::clone(tier), key.clone());
            tokio::spawn(async move { tier.claim(&key, wait).await })
        };
        // As patient as this tier's gets have needed (p99 of all of them, so
        // a slow machine does not give up on healthy nodes), within bounds.
        let p99 = self.tiers[i].counters.get_latency.snapshot().p99;
        let patience = (p99 * 4).clamp(CLAIM_TIMEOUT_MIN, CLAIM_TIMEOUT_MAX);
        match tokio::time::timeout(patience, claim).await {
            Ok(Ok(Ok(Claim::Taken))) => {}
            Ok(Ok(Ok(Claim::Won))) => {
                c.won.fetch_add(1, Relaxed);
                return None;
            }
            _ => return None,
        }
        c.waited.fetch_add(1, Relaxed);
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                c.fell_back.fetch_add(1, Relaxed);
                return None;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(20));
            if let Ok(Some(v)) = self.get_from(i, key).await {
                c.filled.fetch_add(1, Relaxed);
                return Some(v);
            }
        }
    }

    async fn fill_above(self: &Arc<Self>, answered: usize, key: &K, value: &V) {
        let targets: Vec<usize> = (0..answered)
            .filter(|&t| self.fill.fills(t, answered))
            .collect();
        if targets.is_empty() {
            return;
        }
        if self.background_fill {
            let inner = Arc::clone(self);
            let key = key.clone();
            let value = value.clone();
            tokio::spawn(async move { inner.fill(&targets, &key, &value).await });
        } else {
            self.fill(&targets, key, value).await;
        }
    }

    async fn fill(&self, targets: &[usize], key: &K, value: &V) {
        let puts = targets.iter().map(|&t| {
            let slot = &self.tiers[t];
            async move {
                slot.counters.fills.fetch_add(1, Relaxed);
                match slot.tier.put(key, value.clone()).await {
                    Ok(()) => {
                        slot.counters
                            .bytes_written
                            .fetch_add(value.weight() as u64, Relaxed);
                    }
                    Err(e) => {
                        slot.counters.fill_errors.fetch_add(1, Relaxed);
                        tracing::warn!(
                            tier = slot.tier.name(),
                            error = &e as &dyn std::error::Error,
                            "filling tier failed"
                        );
                    }
                }
            }
        });
        futures::future::join_all(puts).await;
    }
}
