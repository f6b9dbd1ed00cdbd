//! Test support (feature `testing`): the conformance suite every tier runs,
//! a fault-injecting tier wrapper, a delaying/blocking TCP proxy and
//! launchers for `memcached` and `moto_server`.
//!
//! Server launchers follow the project rule: when the program is missing,
//! [`require_tool`] prints `skipped: ...` and returns `None`, unless
//! `LODE_REQUIRE_SERVERS=1`, in which case it panics.

pub mod conformance;
mod faulty;
mod proxy;
mod servers;

pub use crate::erasure::forge_shard;
pub use faulty::FaultyTier;
pub use proxy::TcpProxy;
pub use servers::{MemcachedServer, MotoServer, free_port, require_tool};
