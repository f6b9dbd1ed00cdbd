//! The tier trait.

use std::time::Duration;

use crate::Result;

/// What [`Tier::claim`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// This caller holds the marker: it fetches the value from the tiers
    /// below and fills this tier.
    Won,
    /// Another client holds the marker and is fetching the value: poll this
    /// tier for a while before fetching it too.
    Taken,
    /// The tier keeps no markers (or is too degraded to coalesce fetches):
    /// fetch from below at once.
    Unsupported,
}

/// One level of a cache: memory, disk, a shared cache fleet or the object store.
///
/// Object safe: a `Arc<dyn Tier<K, V>>` can be stored and composed.
///
/// # Contract
/// Every implementation runs the conformance suite
/// (`testing::conformance`, feature `testing`), which checks these rules:
/// - [`get`](Tier::get) returns `Ok(None)` when the tier does not hold the key
///   (a miss is not an error) and `Ok(Some(v))` only with the value last put
///   under that key: a tier never returns bytes it cannot vouch for (truncated
///   files, corrupt shards, a different key's value).
/// - [`put`](Tier::put) is idempotent: putting the same value again succeeds
///   and changes nothing. Caches may drop any value at any time (eviction),
///   so a successful put does not promise a later hit; an authority (the
///   object store) does promise it. Values are expected to be immutable per
///   key (content addressed): a put over an existing key may keep the old value.
/// - [`remove`](Tier::remove) of an absent key succeeds.
/// - Errors say which tier failed and carry the key:
///   [`Error::tier`](crate::Error::tier) is the tier's [`name`](Tier::name),
///   [`Error::key`](crate::Error::key) contains the key's storage name, and
///   the message shows both (checked by `testing::conformance::run_errors`
///   on a broken instance of each tier that can fail).
/// - All methods may be called concurrently from many tasks.
#[async_trait::async_trait]
pub trait Tier<K, V>: Send + Sync
where
    K: Sync,
    V: Send + 'static,
{
    /// A short human-readable name for stats and errors (e.g. `"memory"`, `"l2"`).
    fn name(&self) -> &str;

    /// The value of `key`, or `None` on a miss.
    async fn get(&self, key: &K) -> Result<Option<V>>;

    /// Stores `value` under `key`.
    async fn put(&self, key: &K, value: V) -> Result<()>;

    /// Drops `key` if present.
    async fn remove(&self, key: &K) -> Result<()>;

    /// Claims, for about `ttl`, the fetch of `key` from the tiers below this
    /// one, so that clients of one shared cache that miss the same key at
    /// once make one fetch instead of one each (a "being fetched" marker;
    /// see [`TieredBuilder::fetch_markers`](crate::TieredBuilder::fetch_markers)).
    /// The marker is only a hint: it expires by itself, is never released
    /// early, and a client that waited in vain fetches anyway.
    /// Default: [`Claim::Unsupported`].
    async fn claim(&self, _key: &K, _ttl: Duration) -> Result<Claim> {
        Ok(Claim::Unsupported)
    }

    /// Whether the tier knows itself to be down right now (e.g. a node's
    /// circuit breaker is open). Default: `false`.
    fn is_down(&self) -> bool {
        false
    }
}
