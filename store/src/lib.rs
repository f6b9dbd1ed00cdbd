//! The lode store and the image lifecycle, as a library.
//!
//! A *store* (a local directory, an S3 bucket or memory) holds sealed
//! chunks under `chunks/`, sealed manifests under `manifests/`, prefetch
//! profiles under `profiles/` and leases under `locks/` ([`layout`]). This
//! crate does everything between an OCI image and a lazily served one:
//!
//! - [`Push`]: flatten an OCI image into a deterministic ext4 image, cut it
//!   into 512 KiB chunks, seal them with convergent encryption on all cores,
//!   upload what the store lacks and write the manifest last, with progress
//!   through [`PushProgress`];
//! - [`gc()`]: mark and sweep of chunks no manifest names, safe against
//!   concurrent pushes through [`lease`]s ([`gc`](mod@gc) says why);
//! - [`open_image`]: manifest + key service + cache tiers (L1 disk, L2
//!   erasure-coded memcached, the store as L3) → a [`worker::LazyImage`]
//!   that fetches only the chunks a read touches;
//! - [`verify()`]: read every chunk the manifests name, report the bad
//!   ones (missing, wrong size, wrong name) and the images using them, and
//!   delete them so the next push uploads them again;
//! - [`salts`]: the pusher's secret salt file; [`profile`]: prefetch
//!   profiles; [`inspect()`](inspect::inspect): a manifest's public facts.
//!
//! The `lode` binary only parses flags and prints what these return.
//!
//! # Example
//!
//! Push a tiny image to a `memory://` store, open it and read a byte range
//! (the ext4 superblock's magic number):
//!
//! ```
//! use std::sync::Arc;
//! use lode_store::{Push, Store, StoreUrl, TierConfig, open_image};
//! use lode_store::kms_envelope::{LocalKms, new_keyring_with_key};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let image = lode_store::testing::oci_image(
//!     &dir.path().join("oci"),
//!     &[&[("etc/motd", b"hello from lode\n")]],
//! )?;
//! let keyring = dir.path().join("keyring");
//! let crypto = &lode_store::chunk_core::RustCrypto;
//! new_keyring_with_key(crypto, &keyring, "default")?;
//! let kms = Arc::new(LocalKms::open(crypto, &keyring)?);
//! let salt = lode_store::chunk_core::Salt::new(1, [7; 32]);
//!
//! let rt = tokio::runtime::Runtime::new()?;
//! rt.block_on(async {
//!     let store = Store::open(&StoreUrl::parse("memory://")?)?;
//!     let pushed = Push::new(&store, &image, "hello", kms.clone(), "default", salt, crypto)
//!         .run()
//!         .await?;
//!     assert!(pushed.new > 0);
//!
//!     let opened = open_image(
//!         &store,
//!         "hello",
//!         kms.as_ref(),
//!         &TierConfig::store_only(),
//!         Default::default(),
//!     )
//!     .await?;
//!     let mut magic = [0u8; 2];
//!     opened.image.read_at(1024 + 0x38, &mut magic).await?;
//!     assert_eq!(magic, [0x53, 0xef]); // ext4's 0xEF53, little-endian
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod gc;
pub mod inspect;
pub mod layout;
pub mod lease;
pub mod list;
mod name;
pub mod open;
pub mod profile;
pub mod push;
pub mod salts;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod units;
mod url;
pub mod verify;
pub mod versions;

pub use error::{BoxError, Error, Result};
pub use gc::{GcMode, GcOptions, GcReport, gc};
pub use layout::{ListedManifest, Store, StoredObject};
pub use lease::{Lease, LeaseKind, push_lease};
pub use list::{ImageListing, list_images};
pub use name::check_image_name;
pub use open::{
    L2Config, Opened, Prefetch, PrefetchStart, ReadaheadSource, TierConfig, image_config,
    kernel_readahead, open_image, open_kms, start_prefetch,
};
pub use push::{ChunkCounts, NoProgress, Push, PushProgress, PushSummary, Replaced};
pub use url::{KmsUrl, StoreUrl};
pub use verify::{BadChunk, ChunkProblem, VerifyOptions, VerifyReport, verify};
pub use versions::{CurrentManifest, ManifestVersion, RetiredVersion};

// The crates underneath, so one dependency is enough.
pub use {cache_tiers, chunk_core, flattener, kms_envelope, manifest, worker};
