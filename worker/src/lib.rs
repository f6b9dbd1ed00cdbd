//! The lode worker: serves a sealed image lazily.
//!
//! A [`LazyImage`] joins an opened manifest (a [`ChunkTable`]: image size,
//! chunk size, one [`ChunkRef`](chunk_core::ChunkRef) per chunk or a hole)
//! with a [`ChunkSource`] (the tiered cache: L1 memory/disk → L2 memcached
//! → L3 object store; [`TieredSource`] adapts `cache_tiers::Tiered`).
//! [`LazyImage::read_at`] fetches only the chunks a read touches, checks the
//! name of bytes that came from an untrusted tier, decrypts them, and keeps a
//! small LRU of plaintext chunks. Concurrent readers of one chunk share one
//! fetch; sequential readers get readahead. Every failure names the chunk
//! ([`Error::Chunk`]); wrong data is never returned.
//!
//! # Main types
//! - [`LazyImage`]: `open` (sealed manifest + KMS), `read_at`,
//!   `read_at_blocking`, `prefetch`, `materialize` (for `lode pull`),
//!   `stats`, `access_log` (for prefetch profiles).
//! - [`profile`]: prefetch profiles. [`LazyImageOptions::record`] makes an
//!   image log the first read of every chunk and 4 KiB block
//!   ([`LazyImage::access_log`], [`LazyImage::block_log`]);
//!   [`profile::BlockMap`] maps blocks to files with `FIEMAP` on the mounted
//!   ext4; [`profile::Profile`] is the JSON file (load, save, validate, check
//!   against a manifest); [`LazyImage::prefetch`] fetches its chunks in the
//!   background with bounded concurrency ([`MountOptions::record_profile`]
//!   writes one when a mount ends).
//! - [`ChunkSource`] and [`TieredSource`]: where sealed chunks come from;
//!   [`MemorySource`] (tests, examples, benchmarks) with
//!   [`MemorySource::insert_image`] to seal an image into it.
//! - [`mount`], [`unmount`], [`MountHandle`], [`spawn_daemon`] (feature
//!   `fuse`): the image as one read-only FUSE file, a read-only loop device
//!   on it (direct I/O, so the FUSE file has no page cache or readahead of
//!   its own; kernel readahead set by [`MountOptions::kernel_readahead_kb`])
//!   and the kernel's ext4 mounted read-only at a mountpoint.
//!   [`spawn_daemon`] is `unsafe`: it forks, so it must run before any
//!   other thread exists.
//! - [`make_undumpable`]: `PR_SET_DUMPABLE 0` for processes that hold keys
//!   (the daemon does it itself).
//! - [`Error`]: every variant carries its context and either prints its
//!   cause or returns it from `source()`, never both; print the chain.
//!
//! # Trust and verification
//! A chunk's name is SHA-256 of its ciphertext. Bytes from an untrusted tier
//! (L2, L3) are checked against the name before decryption. Bytes from a
//! trusted tier (the local L1, which [`TieredSource`] fills only with bytes
//! that passed verification and decryption) skip the hash; AES-GCM still
//! authenticates every byte under the key from the manifest, so a corrupted
//! L1 entry is an error, after which it is dropped and the chunk fetched
//! once more from the lower tiers. [`Verify::Always`] checks names for every
//! tier.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use worker::{ChunkTable, LazyImage, LazyImageOptions, MemorySource, TierId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> worker::Result<()> {
//! // A 1000-byte image in chunks of 512 bytes, both holes: reads give zeros.
//! let table = ChunkTable { image_size: 1000, chunk_size: 512, chunks: vec![None, None] };
//! let source = Arc::new(MemorySource::new(TierId::untrusted("store")));
//! let image = LazyImage::new(table, source, LazyImageOptions::default())?;
//! let mut buf = [1u8; 100];
//! assert_eq!(image.read_at(950, &mut buf).await?, 50);
//! assert!(buf[..50].iter().all(|&b| b == 0));
//! assert_eq!(image.stats().holes_served, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//! - `fuse` (default): FUSE exposure of the image as one read-only file, its
//!   loop device and the read-only ext4 mount (Linux, root; no libfuse).
//! - `aws-lc-rs`: compiles chunk-core's AWS-LC backend
//!   ([`LazyImageOptions::crypto`] selects the backend).
//! - `nbd` (default): [`nbd`], an NBD server exporting the image read-only
//!   over TCP or a Unix socket.

mod crypto;
#[cfg(feature = "fuse")]
mod daemon;
mod error;
#[cfg(feature = "fuse")]
mod fuse;
mod hardening;
mod image;
#[cfg(feature = "fuse")]
pub mod loopdev;
#[cfg(feature = "fuse")]
mod mount;
#[cfg(feature = "nbd")]
pub mod nbd;
pub mod profile;
mod source;
mod stats;
mod tiered;

#[cfg(feature = "fuse")]
pub use daemon::{Daemon, DaemonOptions, Readiness, spawn_daemon};
pub use error::{
    ChunkError, Error, MountProblem, ProfileMismatch, ProfileProblem, Result, SourceError,
};
pub use hardening::{create_private_dir, is_dumpable, make_undumpable, raise_open_file_limit};
pub use image::{
    BLOCK_SIZE, BlockLog, BlockRun, ChunkAccess, ChunkTable, LazyImage, LazyImageOptions,
    MaterializeReport, PrefetchReport, Verify,
};
/// Default kernel readahead of the loop device over a mounted image (KiB;
/// the kernel's usual default for disks, measured best for plain images).
pub const DEFAULT_KERNEL_READAHEAD_KB: u32 = 128;

#[cfg(feature = "fuse")]
pub use mount::{
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_STATE_DIR, MountHandle, MountOptions, MountState,
    ProfileTarget, is_mount_point, kernel_request_timeout, mount, mounts, state_path, unmount,
};
pub use source::{ChunkSource, Fault, Fetched, MemorySource, TierId};
pub use stats::{Percentiles, Stats, TierStats};
pub use tiered::TieredSource;
