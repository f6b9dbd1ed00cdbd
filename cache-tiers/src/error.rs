//! Errors of `cache-tiers`.

use std::sync::Arc;
use std::time::Duration;

/// A foreign error, boxed so that this crate's API does not expose other
/// crates' types (as object_store does).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in a tier or a composition of tiers.
///
/// A variant's message never repeats its cause: the cause is returned from
/// [`source()`](std::error::Error::source). Print the whole chain (e.g.
/// `anyhow`'s `{:#}`, or tracing's `error = &e as &dyn Error`) to see it.
///
/// Every variant names the tier and, where there is one, the key (in its
/// [`CacheKey::storage_name`](crate::CacheKey::storage_name) form), so a log
/// line alone says what failed where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation failed.
    #[error("tier {tier}: {op} of key {key:?} failed")]
    Io {
        /// Name of the tier.
        tier: String,
        /// The key (empty when the operation concerns no key).
        key: String,
        /// What was being done (`"read"`, `"write"`, `"rename"`, ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An object-store request failed for good (not found is a miss, not an error).
    #[cfg(feature = "object-store")]
    #[error("tier {tier}: {op} of key {key:?} failed after {attempts} attempt(s)")]
    ObjectStore {
        /// Name of the tier.
        tier: String,
        /// The key.
        key: String,
        /// `"get"`, `"put"`, `"delete"`, `"head"` or `"list"`.
        op: &'static str,
        /// How many attempts were made (retries of transient errors included).
        attempts: u32,
        /// The last error: an `object_store::Error`, boxed so that this
        /// crate's API does not expose object_store's types.
        #[source]
        source: BoxError,
    },
    /// A memcached request failed.
    #[cfg(feature = "memcached")]
    #[error("memcached node {node}: {op} of key {key:?} failed")]
    Memcached {
        /// Name of the node (its address unless named otherwise).
        node: String,
        /// The key.
        key: String,
        /// `"connect"`, `"get"`, `"set"` or `"delete"`.
        op: &'static str,
        /// The client's error, boxed (the client crate's type stays private).
        #[source]
        source: BoxError,
    },
    /// A cache node is skipped for a while after it refused a connection.
    #[error("node {node} is down (retrying in {for_:?}); {key:?} not asked")]
    NodeDown {
        /// Name of the node.
        node: String,
        /// The key.
        key: String,
        /// How long until the node is tried again.
        for_: Duration,
    },
    /// An operation did not finish in time.
    #[error("tier {tier}: {op} of key {key:?} timed out after {after:?}")]
    Timeout {
        /// Name of the tier.
        tier: String,
        /// The key.
        key: String,
        /// The operation.
        op: &'static str,
        /// The limit that was exceeded.
        after: Duration,
    },
    /// A value is larger than a tier allows: a put refused, or a get that
    /// found a stored object over the tier's read limit (nothing of it read).
    #[error("tier {tier}: value of key {key:?} is {size} bytes, more than the limit of {limit}")]
    ValueTooLarge {
        /// Name of the tier.
        tier: String,
        /// The key.
        key: String,
        /// Size of the value.
        size: usize,
        /// The tier's limit.
        limit: usize,
    },
    /// Too few nodes accepted the shards of a value for it to be readable.
    #[error("tier {tier}: put of key {key:?} stored {stored} shard(s), {needed} are needed")]
    NotEnoughShards {
        /// Name of the tier.
        tier: String,
        /// The key.
        key: String,
        /// Shards that were stored.
        stored: usize,
        /// Shards needed to read the value back.
        needed: usize,
    },
    /// Too many shard requests failed to tell whether a value is there.
    #[error(
        "tier {tier}: get of key {key:?}: {failed} of {asked} shard request(s) failed, {needed} valid shards are needed"
    )]
    Unavailable {
        /// Name of the tier.
        tier: String,
        /// The key.
        key: String,
        /// Shard requests that failed (errors and timeouts, not misses).
        failed: usize,
        /// Shard requests sent.
        asked: usize,
        /// Valid shards needed.
        needed: usize,
    },
    /// Removing a value failed on some of the nodes holding its shards
    /// (the shards there may stay until evicted).
    #[error(
        "tier {tier}: remove of key {key:?}: {failed} of {asked} shard removal(s) failed (the first error is the source)"
    )]
    ShardRemove {
        /// Name of the tier.
        tier: String,
        /// The key.
        key: String,
        /// Removals that failed.
        failed: usize,
        /// Removals sent.
        asked: usize,
        /// The first node's error.
        #[source]
        source: Box<Error>,
    },
    /// Erasure coding or decoding failed.
    #[error("tier {tier}: erasure coding of key {key:?} failed")]
    Coding {
        /// Name of the tier.
        tier: String,
        /// The key.
        key: String,
        /// The coder's error, boxed.
        #[source]
        source: BoxError,
    },
    /// A configuration value was rejected.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A background task panicked or was cancelled.
    #[error("tier {tier}: background task for key {key:?} failed")]
    Task {
        /// Name of the tier.
        tier: String,
        /// The key.
        key: String,
        /// The join error, boxed.
        #[source]
        source: BoxError,
    },
    /// The coalesced fetch this call waited on failed; the leader's error is the source.
    #[error("coalesced fetch of key {key:?} failed")]
    Coalesced {
        /// The key.
        key: String,
        /// The error the fetching call got.
        #[source]
        source: Arc<Error>,
    },
}

impl Error {
    /// The name of the tier (or memcached node) that failed, when the error
    /// concerns one; for a coalesced fetch, the leader's.
    pub fn tier(&self) -> Option<&str> {
        match self {
            Self::Io { tier, .. }
            | Self::Timeout { tier, .. }
            | Self::ValueTooLarge { tier, .. }
            | Self::NotEnoughShards { tier, .. }
            | Self::ShardRemove { tier, .. }
            | Self::Unavailable { tier, .. }
            | Self::Coding { tier, .. }
            | Self::Task { tier, .. } => Some(tier),
            #[cfg(feature = "object-store")]
            Self::ObjectStore { tier, .. } => Some(tier),
            #[cfg(feature = "memcached")]
            Self::Memcached { node, .. } => Some(node),
            Self::NodeDown { node, .. } => Some(node),
            Self::Coalesced { source, .. } => source.tier(),
            Self::InvalidConfig { .. } => None,
        }
    }

    /// The key the failed operation concerned (its storage name, possibly
    /// with a node's key prefix or shard suffix), when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Io { key, .. }
            | Self::Timeout { key, .. }
            | Self::ValueTooLarge { key, .. }
            | Self::NotEnoughShards { key, .. }
            | Self::ShardRemove { key, .. }
            | Self::Unavailable { key, .. }
            | Self::Coding { key, .. }
            | Self::Task { key, .. }
            | Self::NodeDown { key, .. }
            | Self::Coalesced { key, .. } => Some(key),
            #[cfg(feature = "object-store")]
            Self::ObjectStore { key, .. } => Some(key),
            #[cfg(feature = "memcached")]
            Self::Memcached { key, .. } => Some(key),
            Self::InvalidConfig { .. } => None,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_names_the_failing_tier_through_coalescing() {
        let io = Error::Io {
            tier: "disk".into(),
            key: "k".into(),
            op: "read",
            source: std::io::Error::other("boom"),
        };
        assert_eq!((io.tier(), io.key()), (Some("disk"), Some("k")));
        let coalesced = Error::Coalesced {
            key: "k".into(),
            source: Arc::new(io),
        };
        assert_eq!(
            (coalesced.tier(), coalesced.key()),
            (Some("disk"), Some("k"))
        );
        let config = Error::InvalidConfig { reason: "x".into() };
        assert_eq!((config.tier(), config.key()), (None, None));
    }
}
