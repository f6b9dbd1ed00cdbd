//! L2: values erasure coded over a fleet of node tiers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::{CacheKey, Claim, Error, Result, Tier};

const MAGIC: &[u8; 4] = b"LEC1";
/// magic, k, m, index, reserved, value length, value checksum, key checksum, shard checksum.
pub(crate) const SHARD_HEADER: usize = 4 + 4 + 8 + 8 + 8 + 8;

/// A node of the fleet: any tier keyed by strings (usually a [`MemcachedNode`](crate::MemcachedNode)).
pub type Node = Arc<dyn Tier<String, Bytes>>;

/// Limits how many extra ("hedged") shard requests gets may send: a token
/// bucket that earns `ratio` tokens per extra request a get could send and
/// holds at most `burst`. A get that finds too few tokens asks only the `k`
/// data-shard nodes first and asks the others only when one of those fails
/// or misses, or after [`late_hedge`](ErasureCodedBuilder::late_hedge).
///
/// With `ratio = 1.0` (the default) every get asks all `n` nodes at once, as
/// Lambda does; with `ratio = 0.1` at most about a tenth of gets do, so
/// hedging can never multiply the load of the fleet by more than that.
#[derive(Debug)]
pub struct HedgeBudget {
    ratio: f64,
    burst: f64,
    tokens: Mutex<f64>,
}

impl HedgeBudget {
    /// A budget earning `ratio` tokens per potential extra request, holding at most `burst`.
    pub fn new(ratio: f64, burst: f64) -> Self {
        let ratio = ratio.clamp(0.0, 1.0);
        let burst = burst.max(0.0);
        Self {
            ratio,
            burst,
            tokens: Mutex::new(burst),
        }
    }

    /// Earns for `extra` potential requests, then takes `extra` tokens if there are enough.
    fn try_take(&self, extra: usize) -> bool {
        let extra = extra as f64;
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        *t = (*t + self.ratio * extra).min(self.burst.max(extra));
        if *t >= extra {
            *t -= extra;
            true
        } else {
            false
        }
    }
}

impl Default for HedgeBudget {
    fn default() -> Self {
        Self::new(1.0, 100.0)
    }
}

/// Shard-level counters of an [`ErasureCodedTier`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardStats {
    /// Valid shards received.
    pub ok: u64,
    /// Shards a node did not have.
    pub missing: u64,
    /// Shards that failed their checks (wrong bytes, wrong key, wrong length) and were ignored.
    pub corrupt: u64,
    /// Shard requests that failed or timed out.
    pub errors: u64,
    /// Gets that asked all `n` nodes at once.
    pub hedged_gets: u64,
    /// Gets that asked `k` nodes first (budget exhausted or no parity).
    pub unhedged_gets: u64,
    /// Requests sent later to replace a failed or missing shard, or by the late hedge.
    pub followups: u64,
    /// Values that needed Reed-Solomon reconstruction (a data shard was not among the first `k`).
    pub reconstructions: u64,
    /// Rebuilds from `k` well-framed shards whose value failed its checksum
    /// (a node returned wrong bytes under a valid frame); the get then tried
    /// other `k`-subsets.
    pub failed_rebuilds: u64,
    /// Shard requests still running when their get had answered (left to finish in the background).
    pub abandoned: u64,
}

#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    missing: AtomicU64,
    corrupt: AtomicU64,
    errors: AtomicU64,
    hedged_gets: AtomicU64,
    unhedged_gets: AtomicU64,
    followups: AtomicU64,
    reconstructions: AtomicU64,
    failed_rebuilds: AtomicU64,
    abandoned: AtomicU64,
}

/// Values split into `k` data and `m` parity shards (Reed-Solomon,
/// `reed-solomon-simd`), stored on `k + m` of the nodes chosen by rendezvous
/// hashing of the key over the node names.
///
/// - **Placement**: each node scores each key by a seeded hash; the `k + m`
///   best nodes hold shards `0..k+m` in score order. Adding or removing a node
///   moves only the shards it wins or held.
/// - **Get**: asks all `k + m` nodes at once (budget permitting, see
///   [`HedgeBudget`]) and answers as soon as any `k` valid shards of one value
///   arrive: a slow, failed or empty node costs nothing while `k` others
///   answer. Requests still running are left to finish in the background so
///   pooled connections stay usable.
/// - **Integrity**: every shard has a header with the value's length and
///   checksum, a checksum of the key and a checksum of the shard itself; a
///   shard that fails is ignored (counted in [`ShardStats::corrupt`]), and the
///   rebuilt value is checked against its checksum before it is returned. A
///   node may still return wrong bytes under a valid frame (a bug, or a bit
///   flip before the frame was made); then the first `k` shards rebuild a
///   value that fails its checksum, so the get asks every node of the key
///   and tries the other `k`-subsets as shards arrive (at most 32 rebuilds).
///   With 4+1 one such shard costs the wait for the fifth shard, never a
///   wrong value; a value no subset rebuilds is a miss.
/// - **Put** writes all shards concurrently (spawned tasks) and succeeds
///   when at least `k` were stored; once `k` are, it waits at most 50 ms for
///   the others and leaves a slow node's put to finish in the background.
/// - **Errors**: a get that cannot gather `k` shards returns `Ok(None)` when
///   more than `m` nodes lack the key, and [`Error::Unavailable`] when node
///   failures are why.
/// - **Shard keys** are `<storage name>.<index>`: two tiers with different
///   `k`/`m` sharing one fleet need different node key prefixes
///   ([`MemcachedConfig::with_key_prefix`](crate::MemcachedConfig::with_key_prefix)).
/// - **Runtime**: [`get`](Tier::get) `tokio::spawn`s one task per shard
///   request, so it must run inside a tokio runtime (a current-thread one
///   is enough) and panics outside one.
///
/// ```
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use cache_tiers::{ErasureCodedTier, MemoryTier, Node, Tier};
///
/// // The shard requests are spawned tasks: a runtime is required.
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// rt.block_on(async {
///     let nodes: Vec<Node> = (0..5)
///         .map(|i| Arc::new(MemoryTier::new(1 << 20).with_name(format!("node{i}"))) as Node)
///         .collect();
///     let l2 = ErasureCodedTier::builder(nodes).build()?; // 4 data + 1 parity
///     let key = "chunk".to_string();
///     l2.put(&key, Bytes::from_static(b"some bytes")).await?;
///     assert_eq!(l2.get(&key).await?.as_deref(), Some(&b"some bytes"[..]));
///     Ok::<(), cache_tiers::Error>(())
/// })?;
/// # Ok::<(), cache_tiers::Error>(())
/// ```
pub struct ErasureCodedTier {
    name: String,
    nodes: Vec<Node>,
    seeds: Vec<u64>,
    k: usize,
    m: usize,
    budget: HedgeBudget,
    late_hedge: Option<Duration>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for ErasureCodedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.nodes.iter().map(|n| n.name()).collect();
        f.debug_struct("ErasureCodedTier")
            .field("name", &self.name)
            .field("nodes", &names)
            .field("k", &self.k)
            .field("m", &self.m)
            .finish_non_exhaustive()
    }
}

/// Builds an [`ErasureCodedTier`].
pub struct ErasureCodedBuilder {
    name: String,
    nodes: Vec<Node>,
    k: usize,
    m: usize,
    budget: HedgeBudget,
    late_hedge: Option<Duration>,
}

impl std::fmt::Debug for ErasureCodedBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErasureCodedBuilder")
            .field("name", &self.name)
            .field("nodes", &self.nodes.len())
            .field("k", &self.k)
            .field("m", &self.m)
            .finish_non_exhaustive()
    }
}

impl ErasureCodedBuilder {
    /// Data shards per value (default 4).
    pub fn data_shards(mut self, k: usize) -> Self {
        self.k = k;
        self
    }

    /// Parity shards per value (default 1); 0 = plain striping, every node needed.
    pub fn parity_shards(mut self, m: usize) -> Self {
        self.m = m;
        self
    }

    /// The hedging budget (default: always hedge, burst 100).
    pub fn hedge_budget(mut self, budget: HedgeBudget) -> Self {
        self.budget = budget;
        self
    }

    /// When a get could not hedge up front, ask the remaining nodes after
    /// this long without `k` shards (default 5 ms; `None` = only on failure).
    pub fn late_hedge(mut self, after: Option<Duration>) -> Self {
        self.late_hedge = after;
        self
    }

    /// Names the tier (default `"erasure-coded"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Builds; needs `k >= 1`, `k + m <= nodes`, `k + m <= 255` and distinct node names.
    pub fn build(self) -> Result<ErasureCodedTier> {
        let n = self.k + self.m;
        if self.k == 0 || n > 255 {
            return Err(Error::InvalidConfig {
                reason: format!("erasure coding {}+{} is out of range", self.k, self.m),
            });
        }
        if self.nodes.len() < n {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "erasure coding {}+{} needs at least {n} nodes, got {}",
                    self.k,
                    self.m,
                    self.nodes.len()
                ),
            });
        }
        if self.m > 0 && !reed_solomon_simd::ReedSolomonEncoder::supports(self.k, self.m) {
            return Err(Error::InvalidConfig {
                reason: format!("reed-solomon-simd does not support {}+{}", self.k, self.m),
            });
        }
        let seeds: Vec<u64> = self
            .nodes
            .iter()
            .map(|n| xxh3_64(n.name().as_bytes()))
            .collect();
        let mut sorted = seeds.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::InvalidConfig {
                reason: "node names must be distinct (they place the shards)".into(),
            });
        }
        Ok(ErasureCodedTier {
            name: self.name,
            nodes: self.nodes,
            seeds,
            k: self.k,
            m: self.m,
            budget: self.budget,
            late_hedge: self.late_hedge,
            counters: Arc::default(),
        })
    }
}

/// How long a put that stored `k` shards still waits for the others before
/// leaving them to finish in the background.
const PUT_GRACE: Duration = Duration::from_millis(50);

/// At most this many Reed-Solomon rebuilds per get. With 4+1 a get needs at
/// most 5 (one per 4-subset of 5 shards); wide codes with several wrong but
/// well-framed shards stop here and miss rather than burn CPU.
const MAX_REBUILDS: usize = 32;

/// The `r`-element subsets of `0..n` in lexicographic order.
struct Combinations {
    n: usize,
    idx: Vec<usize>,
    done: bool,
}

impl Combinations {
    fn new(n: usize, r: usize) -> Self {
        Self {
            n,
            idx: (0..r).collect(),
            done: r > n,
        }
    }
}

impl Iterator for Combinations {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        if self.done {
            return None;
        }
        let out = self.idx.clone();
        let r = self.idx.len();
        // Advance the rightmost index that can still move.
        match (0..r).rev().find(|&i| self.idx[i] < self.n - r + i) {
            Some(i) => {
                self.idx[i] += 1;
                for j in i + 1..r {
                    self.idx[j] = self.idx[j - 1] + 1;
                }
            }
            None => self.done = true,
        }
        Some(out)
    }
}

/// A shard that passed its checks.
struct Shard {
    index: usize,
    value_len: u64,
    value_sum: u64,
    payload: Bytes,
}

fn shard_size(value_len: usize, k: usize) -> usize {
    let s = value_len.div_ceil(k.max(1)).max(2);
    // reed-solomon-simd wants an even size; saturating because a bad node
    // may claim any length.
    s.saturating_add(s & 1)
}

/// Encodes `value` into `k + m` framed shards.
pub(crate) fn encode_shards(
    key: &[u8],
    value: &[u8],
    k: usize,
    m: usize,
) -> std::result::Result<Vec<Bytes>, reed_solomon_simd::Error> {
    let s = shard_size(value.len(), k);
    let mut data: Vec<Vec<u8>> = (0..k)
        .map(|i| {
            let start = (i * s).min(value.len());
            let end = ((i + 1) * s).min(value.len());
            let mut v = Vec::with_capacity(s);
            v.extend_from_slice(&value[start..end]);
            v.resize(s, 0);
            v
        })
        .collect();
    let parity = if m > 0 {
        reed_solomon_simd::encode(k, m, &data)?
    } else {
        Vec::new()
    };
    data.extend(parity);
    let value_sum = xxh3_64(value);
    let key_sum = xxh3_64(key);
    Ok(data
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            let mut b = BytesMut::with_capacity(SHARD_HEADER + payload.len());
            b.extend_from_slice(MAGIC);
            b.extend_from_slice(&[k as u8, m as u8, i as u8, 0]);
            b.extend_from_slice(&(value.len() as u64).to_le_bytes());
            b.extend_from_slice(&value_sum.to_le_bytes());
            b.extend_from_slice(&key_sum.to_le_bytes());
            let sum = shard_sum(&b, &payload);
            b.extend_from_slice(&sum.to_le_bytes());
            b.extend_from_slice(&payload);
            b.freeze()
        })
        .collect())
}

/// A copy of a stored shard whose payload has one byte changed and whose
/// frame checksum is recomputed: it passes every per-shard check, so only the
/// value checksum after a rebuild can catch it. What a buggy node, or memory
/// corrupted before the frame was computed, would return. `None` if `raw` is
/// not a framed shard with a payload.
#[cfg(feature = "testing")]
pub fn forge_shard(raw: &[u8]) -> Option<Bytes> {
    if raw.len() <= SHARD_HEADER || &raw[..4] != MAGIC {
        return None;
    }
    let mut b = raw.to_vec();
    b[SHARD_HEADER] ^= 0x5a;
    let sum = shard_sum(&b[..32], &b[SHARD_HEADER..]);
    b[32..40].copy_from_slice(&sum.to_le_bytes());
    Some(Bytes::from(b))
}

fn shard_sum(header32: &[u8], payload: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(header32);
    h.update(payload);
    h.digest()
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Checks a shard fetched for position `index` of a key; `None` if it fails anything.
fn parse_shard(raw: Bytes, key_sum: u64, k: usize, m: usize, index: usize) -> Option<Shard> {
    if raw.len() < SHARD_HEADER || &raw[..4] != MAGIC {
        return None;
    }
    if raw[4] as usize != k || raw[5] as usize != m || raw[6] as usize != index {
        return None;
    }
    let value_len = le64(&raw[8..]);
    let value_sum = le64(&raw[16..]);
    if le64(&raw[24..]) != key_sum {
        return None;
    }
    let expect_size = shard_size(usize::try_from(value_len).ok()?, k);
    if raw.len() - SHARD_HEADER != expect_size {
        return None;
    }
    if shard_sum(&raw[..32], &raw[SHARD_HEADER..]) != le64(&raw[32..]) {
        return None;
    }
    Some(Shard {
        index,
        value_len,
        value_sum,
        payload: raw.slice(SHARD_HEADER..),
    })
}

/// Rebuilds a value from `k` shards of one value; `Ok(None)` if the result fails its checksum.
fn rebuild(
    shards: &[&Shard],
    k: usize,
    m: usize,
) -> std::result::Result<(Option<Bytes>, bool), reed_solomon_simd::Error> {
    let value_len = shards[0].value_len as usize;
    let value_sum = shards[0].value_sum;
    let mut data: Vec<Option<&[u8]>> = vec![None; k];
    for s in shards.iter().filter(|s| s.index < k) {
        data[s.index] = Some(&s.payload);
    }
    let missing = data.iter().filter(|d| d.is_none()).count();
    let restored = if missing > 0 {
        reed_solomon_simd::decode(
            k,
            m,
            shards
                .iter()
                .filter(|s| s.index < k)
                .map(|s| (s.index, &s.payload[..])),
            shards
                .iter()
                .filter(|s| s.index >= k)
                .map(|s| (s.index - k, &s.payload[..])),
        )?
    } else {
        Default::default()
    };
    let mut out = BytesMut::with_capacity(value_len);
    for (i, d) in data.iter().enumerate() {
        let part: &[u8] = match *d {
            Some(p) => p,
            None => match restored.get(&i) {
                Some(p) => p,
                None => return Ok((None, missing > 0)),
            },
        };
        let room = value_len - out.len();
        out.extend_from_slice(&part[..part.len().min(room)]);
    }
    let out = out.freeze();
    Ok((
        (out.len() == value_len && xxh3_64(&out) == value_sum).then_some(out),
        missing > 0,
    ))
}

impl ErasureCodedTier {
    /// Starts a builder over `nodes` (4+1 unless changed).
    pub fn builder(nodes: Vec<Node>) -> ErasureCodedBuilder {
        ErasureCodedBuilder {
            name: "erasure-coded".into(),
            nodes,
            k: 4,
            m: 1,
            budget: HedgeBudget::default(),
            late_hedge: Some(Duration::from_millis(5)),
        }
    }

    /// Data shards per value.
    pub fn data_shards(&self) -> usize {
        self.k
    }

    /// Parity shards per value.
    pub fn parity_shards(&self) -> usize {
        self.m
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Indices into [`nodes`](Self::nodes) of the nodes holding shards `0..k+m` of `key`.
    pub fn placement<K: CacheKey>(&self, key: &K) -> Vec<usize> {
        let kb = key.as_bytes();
        let mut scored: Vec<(u64, usize)> = self
            .seeds
            .iter()
            .enumerate()
            .map(|(i, &seed)| (xxh3_64_with_seed(kb, seed), i))
            .collect();
        scored.sort_unstable_by(|a, b| b.cmp(a));
        scored.truncate(self.k + self.m);
        scored.into_iter().map(|(_, i)| i).collect()
    }

    /// The key under which a node stores shard `index` of `key`.
    pub fn shard_key<K: CacheKey>(key: &K, index: usize) -> String {
        format!("{}.{index}", key.storage_name())
    }

    /// Shard-level counters so far.
    pub fn shard_stats(&self) -> ShardStats {
        let c = &self.counters;
        ShardStats {
            ok: c.ok.load(Relaxed),
            missing: c.missing.load(Relaxed),
            corrupt: c.corrupt.load(Relaxed),
            errors: c.errors.load(Relaxed),
            hedged_gets: c.hedged_gets.load(Relaxed),
            unhedged_gets: c.unhedged_gets.load(Relaxed),
            followups: c.followups.load(Relaxed),
            reconstructions: c.reconstructions.load(Relaxed),
            failed_rebuilds: c.failed_rebuilds.load(Relaxed),
            abandoned: c.abandoned.load(Relaxed),
        }
    }

    /// Tries the `k`-subsets of `group` that contain its newest shard (the
    /// others were tried when they were complete) until one rebuilds a value
    /// that passes its length and checksum, or `budget` rebuilds are spent.
    fn rebuild_any(
        &self,
        group: &[Shard],
        k: usize,
        m: usize,
        budget: &mut usize,
    ) -> std::result::Result<Option<Bytes>, reed_solomon_simd::Error> {
        let c = &self.counters;
        let Some((newest, older)) = group.split_last() else {
            return Ok(None);
        };
        for pick in Combinations::new(older.len(), k - 1) {
            if *budget == 0 {
                return Ok(None);
            }
            *budget -= 1;
            let subset: Vec<&Shard> = pick.iter().map(|&i| &older[i]).chain([newest]).collect();
            let (value, reconstructed) = rebuild(&subset, k, m)?;
            match value {
                Some(v) => {
                    if reconstructed {
                        c.reconstructions.fetch_add(1, Relaxed);
                    }
                    return Ok(Some(v));
                }
                None => {
                    c.failed_rebuilds.fetch_add(1, Relaxed);
                }
            }
        }
        Ok(None)
    }

    fn coding_err<K: CacheKey>(&self, key: &K, source: reed_solomon_simd::Error) -> Error {
        Error::Coding {
            tier: self.name.clone(),
            key: key.storage_name().into_owned(),
            source: Box::new(source),
        }
    }
}

/// What one shard request came back with.
enum Reply {
    Valid(Shard),
    Missing,
    Corrupt,
    Failed,
}

#[async_trait::async_trait]
impl<K: CacheKey> Tier<K, Bytes> for ErasureCodedTier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, key: &K) -> Result<Option<Bytes>> {
        let (k, m) = (self.k, self.m);
        let n = k + m;
        let placement = self.placement(key);
        let key_sum = xxh3_64(key.as_bytes());
        let hedge = m > 0 && self.budget.try_take(m);
        let c = &self.counters;
        if hedge {
            c.hedged_gets.fetch_add(1, Relaxed);
        } else {
            c.unhedged_gets.fetch_add(1, Relaxed);
        }
        let spawn = |index: usize| {
            let node = Arc::clone(&self.nodes[placement[index]]);
            let skey = Self::shard_key(key, index);
            let counters = Arc::clone(&self.counters);
            tokio::spawn(async move {
                let reply = match node.get(&skey).await {
                    Ok(Some(raw)) => match parse_shard(raw, key_sum, k, m, index) {
                        Some(s) => Reply::Valid(s),
                        None => {
                            tracing::warn!(node = node.name(), shard = %skey, "shard failed its checks; ignored");
                            Reply::Corrupt
                        }
                    },
                    Ok(None) => Reply::Missing,
                    Err(e) => {
                        tracing::debug!(node = node.name(), shard = %skey, error = &e as &dyn std::error::Error, "shard request failed");
                        Reply::Failed
                    }
                };
                match &reply {
                    Reply::Valid(_) => counters.ok.fetch_add(1, Relaxed),
                    Reply::Missing => counters.missing.fetch_add(1, Relaxed),
                    Reply::Corrupt => counters.corrupt.fetch_add(1, Relaxed),
                    Reply::Failed => counters.errors.fetch_add(1, Relaxed),
                };
                reply
            })
        };
        let mut inflight = FuturesUnordered::new();
        let first = if hedge || m == 0 { n } else { k };
        for i in 0..first {
            inflight.push(spawn(i));
        }
        let mut next = first;
        // Shards grouped by the value they belong to (length, checksum): stale
        // shards of an older value never mix with a newer one's.
        let mut groups: HashMap<(u64, u64), Vec<Shard>> = HashMap::new();
        let (mut missing, mut failed) = (0usize, 0usize);
        let mut rebuild_budget = MAX_REBUILDS;
        let mut suspect = false;
        let mut late = self
            .late_hedge
            .filter(|_| next < n)
            .map(|d| Box::pin(tokio::time::sleep(d)));
        loop {
            let reply = tokio::select! {
                biased;
                r = inflight.next() => match r {
                    Some(r) => r,
                    None => break,
                },
                () = async { match late.as_mut() { Some(s) => s.await, None => std::future::pending().await } } => {
                    late = None;
                    while next < n {
                        c.followups.fetch_add(1, Relaxed);
                        inflight.push(spawn(next));
                        next += 1;
                    }
                    continue;
                }
            };
            let reply = reply.unwrap_or(Reply::Failed);
            match reply {
                Reply::Valid(s) => {
                    let g = groups.entry((s.value_len, s.value_sum)).or_default();
                    g.push(s);
                    if g.len() >= k {
                        let value = self
                            .rebuild_any(g, k, m, &mut rebuild_budget)
                            .map_err(|e| self.coding_err(key, e))?;
                        if let Some(value) = value {
                            c.abandoned.fetch_add(inflight.len() as u64, Relaxed);
                            drop(inflight); // detaches the remaining tasks
                            return Ok(Some(value));
                        }
                        // A shard with a valid frame but wrong bytes is among
                        // these: ask every node not asked yet and try the
                        // other k-subsets as their shards arrive.
                        if !suspect {
                            suspect = true;
                            tracing::warn!(tier = %self.name, key = %key.storage_name(), "rebuilt value failed its checksum; waiting for more shards");
                        }
                        while next < n {
                            c.followups.fetch_add(1, Relaxed);
                            inflight.push(spawn(next));
                            next += 1;
                        }
                    }
                    continue;
                }
                Reply::Missing | Reply::Corrupt => missing += 1,
                Reply::Failed => failed += 1,
            }
            // Replace the lost shard with one not yet asked for.
            if next < n {
                c.followups.fetch_add(1, Relaxed);
                inflight.push(spawn(next));
                next += 1;
            }
            if missing > m {
                // At most n - missing < k shards exist: a miss, whatever the rest say.
                c.abandoned.fetch_add(inflight.len() as u64, Relaxed);
                if suspect {
                    c.corrupt.fetch_add(1, Relaxed);
                }
                return Ok(None);
            }
        }
        if suspect {
            c.corrupt.fetch_add(1, Relaxed);
            tracing::warn!(tier = %self.name, key = %key.storage_name(), "no k shards rebuild a value that passes its checksum; treated as a miss");
        }
        if failed > 0 {
            return Err(Error::Unavailable {
                tier: self.name.clone(),
                key: key.storage_name().into_owned(),
                failed,
                asked: next,
                needed: k,
            });
        }
        Ok(None)
    }

    async fn put(&self, key: &K, value: Bytes) -> Result<()> {
        let (k, m) = (self.k, self.m);
        let shards =
            encode_shards(key.as_bytes(), &value, k, m).map_err(|e| self.coding_err(key, e))?;
        let placement = self.placement(key);
        // Each shard put is its own task: once `k` shards are stored the put
        // waits at most PUT_GRACE for the rest, so a slow or hung node's put
        // finishes (or times out) in the background instead of holding the
        // caller for its timeout.
        let mut puts: FuturesUnordered<_> = shards
            .into_iter()
            .enumerate()
            .map(|(i, shard)| {
                let node = Arc::clone(&self.nodes[placement[i]]);
                let skey = Self::shard_key(key, i);
                tokio::spawn(async move { node.put(&skey, shard).await })
            })
            .collect();
        let n = k + m;
        let (mut stored, mut errors) = (0usize, Vec::new());
        let mut grace = None;
        loop {
            let next = match grace.as_mut() {
                None => puts.next().await,
                Some(g) => tokio::select! {
                    r = puts.next() => r,
                    () = g => break,
                },
            };
            let Some(r) = next else { break };
            match r {
                Ok(Ok(())) => stored += 1,
                Ok(Err(e)) => errors.push(e),
                Err(join) => errors.push(Error::Task {
                    tier: self.name.clone(),
                    key: key.storage_name().into_owned(),
                    source: Box::new(join),
                }),
            }
            if n - errors.len() < k {
                break;
            }
            if stored >= k && grace.is_none() {
                grace = Some(Box::pin(tokio::time::sleep(PUT_GRACE)));
            }
        }
        if stored < k {
            for e in &errors {
                tracing::debug!(tier = %self.name, error = e as &dyn std::error::Error, "shard put failed");
            }
            return Err(Error::NotEnoughShards {
                tier: self.name.clone(),
                key: key.storage_name().into_owned(),
                stored,
                needed: k,
            });
        }
        Ok(())
    }

    /// Claims on the first node of the key's placement that is not down;
    /// `Unsupported` when more than `m` of them are down (the fill could not
    /// store `k` shards, so waiting for it would be in vain).
    async fn claim(&self, key: &K, ttl: Duration) -> Result<Claim> {
        let placement = self.placement(key);
        let up: Vec<usize> = placement
            .into_iter()
            .filter(|&i| !self.nodes[i].is_down())
            .collect();
        if up.len() < self.k {
            return Ok(Claim::Unsupported);
        }
        let node = &self.nodes[up[0]];
        node.claim(&key.storage_name().into_owned(), ttl).await
    }

    fn is_down(&self) -> bool {
        let down = self.nodes.iter().filter(|n| n.is_down()).count();
        self.nodes.len() - down < self.k
    }

    async fn remove(&self, key: &K) -> Result<()> {
        let placement = self.placement(key);
        let removes = placement.iter().enumerate().map(|(i, &node)| {
            let node = Arc::clone(&self.nodes[node]);
            let skey = Self::shard_key(key, i);
            async move { node.remove(&skey).await }
        });
        let results = futures::future::join_all(removes).await;
        let asked = results.len();
        let mut errors = results.into_iter().filter_map(|r| r.err());
        let Some(first) = errors.next() else {
            return Ok(());
        };
        Err(Error::ShardRemove {
            tier: self.name.clone(),
            key: key.storage_name().into_owned(),
            failed: 1 + errors.count(),
            asked,
            source: Box::new(first),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards_of(value: &[u8], k: usize, m: usize) -> Vec<Bytes> {
        encode_shards(b"key", value, k, m).unwrap()
    }

    fn parse_all(raw: &[Bytes], k: usize, m: usize) -> Vec<Shard> {
        raw.iter()
            .enumerate()
            .map(|(i, r)| parse_shard(r.clone(), xxh3_64(b"key"), k, m, i).unwrap())
            .collect()
    }

    #[test]
    fn every_k_subset_rebuilds_the_value() {
        let value: Vec<u8> = (0..10_001u32).map(|i| (i * 7 % 251) as u8).collect();
        let (k, m) = (4, 2);
        let shards = parse_all(&shards_of(&value, k, m), k, m);
        // All 15 subsets of size 4 of 6 shards.
        for mask in 0u32..64 {
            if mask.count_ones() as usize != k {
                continue;
            }
            let pick: Vec<&Shard> = shards
                .iter()
                .filter(|s| mask & (1 << s.index) != 0)
                .collect();
            let (v, _) = rebuild(&pick, k, m).unwrap();
            assert_eq!(v.as_deref(), Some(&value[..]), "mask {mask:b}");
        }
    }

    #[test]
    fn combinations_enumerate_every_subset_once() {
        let all: Vec<Vec<usize>> = Combinations::new(4, 3).collect();
        assert_eq!(all, [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]);
        assert_eq!(Combinations::new(6, 4).count(), 15);
        assert_eq!(
            Combinations::new(3, 0).collect::<Vec<_>>(),
            [Vec::<usize>::new()]
        );
        assert_eq!(Combinations::new(2, 3).count(), 0);
    }

    #[test]
    fn wrong_bytes_wrong_key_wrong_index_are_rejected() {
        let raw = shards_of(b"hello world", 4, 1);
        let ks = xxh3_64(b"key");
        assert!(parse_shard(raw[0].clone(), ks, 4, 1, 0).is_some());
        let mut bad = raw[0].to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert!(parse_shard(Bytes::from(bad), ks, 4, 1, 0).is_none());
        assert!(parse_shard(raw[0].clone(), xxh3_64(b"other"), 4, 1, 0).is_none());
        assert!(parse_shard(raw[0].clone(), ks, 4, 1, 1).is_none());
        assert!(parse_shard(raw[0].slice(..10), ks, 4, 1, 0).is_none());
        assert!(parse_shard(Bytes::new(), ks, 4, 1, 0).is_none());
    }

    #[test]
    fn absurd_lengths_in_a_header_are_rejected_without_panicking() {
        let raw = shards_of(b"hello", 1, 1);
        let mut bad = raw[0].to_vec();
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_shard(Bytes::from(bad), xxh3_64(b"key"), 1, 1, 0).is_none());
    }

    #[test]
    fn empty_and_tiny_values_round_trip() {
        for len in [0usize, 1, 2, 3, 7, 8, 9] {
            let value = vec![0xabu8; len];
            for (k, m) in [(4, 1), (4, 0), (1, 1), (3, 2)] {
                let shards = parse_all(&shards_of(&value, k, m), k, m);
                let tail: Vec<&Shard> = shards[m..].iter().collect();
                let (v, _) = rebuild(&tail, k, m).unwrap();
                assert_eq!(v.as_deref(), Some(&value[..]), "len {len} {k}+{m}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_shard_bytes_never_panic_or_pass(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..200), k in 1usize..6, m in 0usize..3, idx in 0usize..8) {
            let mut framed = raw.clone();
            if framed.len() >= 8 {
                // Plausible magic and k/m/index so the later checks run too.
                framed[..4].copy_from_slice(MAGIC);
                framed[4] = k as u8;
                framed[5] = m as u8;
                framed[6] = idx as u8;
            }
            proptest::prop_assert!(parse_shard(Bytes::from(framed), xxh3_64(b"key"), k, m, idx).is_none());
        }

        #[test]
        fn any_value_survives_losing_m_shards(value in proptest::collection::vec(proptest::num::u8::ANY, 0..5000), lost in 0usize..5) {
            let shards = parse_all(&shards_of(&value, 4, 1), 4, 1);
            let keep: Vec<&Shard> = shards.iter().filter(|s| s.index != lost).collect();
            let (v, _) = rebuild(&keep, 4, 1).unwrap();
            proptest::prop_assert_eq!(v.as_deref(), Some(&value[..]));
        }
    }
}
