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

/// An error's message and those of its sources, `: `-separated (errors of
/// this crate return their cause from `source()`, never print it).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}
