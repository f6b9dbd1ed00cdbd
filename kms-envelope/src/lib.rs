//! Envelope encryption for lode: a small, object-safe [`Kms`] trait and two
//! backends.
//!
//! A KMS holds master keys that never leave it. Callers ask it for a fresh
//! *data key* ([`Kms::generate_data_key`]): they get the 32-byte plaintext key
//! to encrypt with, and the same key *wrapped* (encrypted) under a master key.
//! They store only the wrapped blob; later, whoever may use the master key
//! unwraps it again ([`Kms::decrypt`], [`Kms::decrypt_with_key`]).
//!
//! Every wrap is bound to an [`EncryptionContext`], a map of non-secret
//! strings (lode puts the image name under `lode:image`). Unwrapping needs the
//! exact same map. A wrong context fails exactly like a wrong key:
//! [`Error::CannotUnwrap`] in both cases, so a caller cannot tell which one it
//! got wrong and nobody learns anything by probing.
//!
//! Backends:
//! - [`LocalKms`]: a keyring file of named master keys with versions (mode
//!   0600, refused when group or others can access it). Wrapping is
//!   AES-256-GCM, run on the caller's [`chunk_core::CryptoProvider`] (so
//!   `--crypto aws-lc-rs` covers the keyring too), with a random 96-bit nonce and AAD = the wrapped blob's header
//!   followed by the [canonical encoding](encode_context) of the context.
//!   [`rotate`] adds a new version that becomes primary; old versions keep
//!   unwrapping. [`new_keyring`], [`add_key`] and [`rotate`] back the CLI's
//!   `lode keyring` commands.
//! - `AwsKms` (feature `aws`): AWS KMS over its JSON protocol
//!   (`TrentService.GenerateDataKey`, `Encrypt`, `Decrypt` with
//!   `EncryptionContext`), SigV4-signed, configured from the standard AWS
//!   environment variables, with `object_store`'s AWS credential chain (the
//!   one the S3 store uses: static keys, web identity, container, instance
//!   metadata), so S3 and KMS sign as the same identity.
//!
//! Both run the same conformance suite (feature `testing`, module `testing`).
//!
//! # Async, and blocking
//!
//! The trait returns boxed futures ([`KmsFuture`]), so `Arc<dyn Kms>` works from
//! any async runtime without a macro crate. [`block_on`] drives one of those
//! futures to completion on the current thread for tests and command-line
//! tools.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "rustcrypto")] {
//! use kms_envelope::{block_on, EncryptionContext, Error, Kms, LocalKms};
//!
//! # fn main() -> Result<(), Error> {
//! let dir = std::env::temp_dir().join(format!("kms-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("keyring");
//! # let _ = std::fs::remove_file(&path);
//! // The crypto backend is the caller's choice (chunk_core::AwsLc with feature "aws-lc-rs").
//! let provider = &chunk_core::RustCrypto;
//! let kms = LocalKms::create_with_key(provider, &path, "images")?; // mode 0600, key "images" version 1
//!
//! let mut ctx = EncryptionContext::new();
//! ctx.insert("lode:image".into(), "python-app".into());
//! let data_key = block_on(kms.generate_data_key("images", &ctx))?;
//! assert_eq!(data_key.key_id, "images@1");
//!
//! // Only the wrapped blob is stored; unwrapping needs the same context.
//! let again = block_on(kms.decrypt(&data_key.wrapped, &ctx))?;
//! assert_eq!(*again, *data_key.plaintext());
//!
//! ctx.insert("lode:image".into(), "other-app".into());
//! let wrong = block_on(kms.decrypt(&data_key.wrapped, &ctx));
//! assert!(matches!(wrong, Err(Error::CannotUnwrap { .. })));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! # main().unwrap();
//! # }
//! ```
//!
//! # Features
//! - `rustcrypto` (default), `aws-lc-rs`: which `chunk-core` crypto backends
//!   are compiled in for `LocalKms` (see [`chunk_core::enabled_providers`]).
//! - `aws`: `AwsKms`, with reqwest (rustls), aws-sigv4, object_store's
//!   credential chain and tokio.
//! - `testing`: the shared `Kms` conformance suite and a seeded RNG for
//!   `LocalKms` (deterministic output for golden tests; never use it for real
//!   keys).

#[cfg(feature = "aws")]
mod aws;
mod error;
mod local;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use zeroize::Zeroizing;

#[cfg(feature = "aws")]
pub use aws::{AwsConfig, AwsCredentials, AwsKms, CredentialsSource};
pub use error::{Error, Result};
pub use local::{DEFAULT_KEY_NAME, LocalKms, add_key, new_keyring, new_keyring_with_key, rotate};

/// An encryption context: non-secret strings bound to a wrapped key.
///
/// A `BTreeMap`, so iteration is sorted by key bytes and the encoding is
/// canonical (see [`encode_context`]).
pub type EncryptionContext = BTreeMap<String, String>;

/// The future every [`Kms`] method returns: boxed, `Send`, borrowing its inputs.
pub type KmsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A fresh data key: the plaintext to encrypt with and the blob to store.
///
/// The plaintext is zeroized on drop; `Debug` prints neither it nor the
/// wrapped blob.
pub struct DataKey {
    plaintext: Zeroizing<[u8; 32]>,
    /// The data key wrapped under the master key; store this.
    pub wrapped: Vec<u8>,
    /// The resolved id of the master key that wrapped it, including the
    /// version where the backend has one (`images@3` for [`LocalKms`], a key
    /// ARN for AWS).
    pub key_id: String,
}

impl DataKey {
    /// Assembles a data key (for [`Kms`] implementations).
    pub fn new(plaintext: Zeroizing<[u8; 32]>, wrapped: Vec<u8>, key_id: String) -> Self {
        Self {
            plaintext,
            wrapped,
            key_id,
        }
    }

    /// The plaintext data key. Handle with care: never log or store it.
    pub fn plaintext(&self) -> &[u8; 32] {
        &self.plaintext
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("plaintext", &"<redacted>")
            .field("wrapped", &format_args!("<{} bytes>", self.wrapped.len()))
            .field("key_id", &self.key_id)
            .finish()
    }
}

/// A data key wrapped by [`Kms::encrypt`].
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The wrapped blob.
    pub wrapped: Vec<u8>,
    /// The resolved id of the master key that wrapped it (see [`DataKey::key_id`]).
    pub key_id: String,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("wrapped", &format_args!("<{} bytes>", self.wrapped.len()))
            .field("key_id", &self.key_id)
            .finish()
    }
}

/// A key management service that wraps and unwraps 32-byte data keys.
///
/// Contract, checked by the conformance suite in module `testing` (feature
/// `testing`) for every backend:
/// - [`generate_data_key`](Kms::generate_data_key) returns a fresh random key
///   on every call, wrapped under the current (primary) version of `key_id`,
///   and reports the resolved key id including that version.
/// - Unwrapping succeeds only with the exact context the key was wrapped with.
///   A wrong context, a key the caller may not use, a blob wrapped under
///   another key or key material, and an altered blob all fail with the same
///   [`Error::CannotUnwrap`]. An unknown key *named by the caller* is
///   [`Error::KeyNotFound`].
/// - After a key is rotated, blobs wrapped under its old versions still unwrap.
/// - No error or `Debug` output contains key material.
pub trait Kms: Send + Sync {
    /// Generates a fresh 32-byte data key and wraps it under `key_id`, bound
    /// to `ctx`.
    fn generate_data_key<'a>(
        &'a self,
        key_id: &'a str,
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, DataKey>;

    /// Wraps an existing data key under `key_id`, bound to `ctx` (used to
    /// re-wrap a data key under another master key or version).
    fn encrypt<'a>(
        &'a self,
        key_id: &'a str,
        plaintext: &'a [u8; 32],
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, WrappedKey>;

    /// Unwraps a blob under whatever key it names, given the context it was
    /// wrapped with.
    fn decrypt<'a>(
        &'a self,
        wrapped: &'a [u8],
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, Zeroizing<[u8; 32]>>;

    /// Like [`decrypt`](Kms::decrypt), but fails with
    /// [`Error::CannotUnwrap`] unless the blob was wrapped under `key_id`
    /// (any version of it when `key_id` names no version). Callers that store
    /// the key id next to the blob use this so the stored id is verified too.
    fn decrypt_with_key<'a>(
        &'a self,
        key_id: &'a str,
        wrapped: &'a [u8],
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, Zeroizing<[u8; 32]>>;
}

/// The canonical byte encoding of an encryption context.
///
/// `u32` little-endian entry count, then for each entry in ascending byte
/// order of keys: `u32` LE key length, key bytes (UTF-8), `u32` LE value
/// length, value bytes (UTF-8). [`LocalKms`] uses it as AAD; one map has
/// exactly one encoding, and different maps have different encodings.
pub fn encode_context(ctx: &EncryptionContext) -> Vec<u8> {
    let size: usize = ctx.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&len_u32(ctx.len()).to_le_bytes());
    for (k, v) in ctx {
        out.extend_from_slice(&len_u32(k.len()).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&len_u32(v.len()).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// Lengths above 4 GiB cannot occur for in-memory strings used as context;
/// saturate rather than panic, which still yields an encoding that never
/// collides with a well-formed one of a different map.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the current thread, for tests and CLIs.
///
/// Without the `aws` feature this is a tiny executor that parks the thread
/// until the future wakes it ([`LocalKms`] futures are ready at once). With
/// `aws`, the future runs on a fresh single-threaded tokio runtime, so
/// `AwsKms` works too; like tokio's own `block_on`, it must then not be called
/// from inside an async runtime (it panics there).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    #[cfg(feature = "aws")]
    {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            return rt.block_on(fut);
        }
    }
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn context_encoding_is_documented_layout() {
        let enc = encode_context(&ctx(&[("b", "2"), ("a", "xy")]));
        let mut want = vec![2, 0, 0, 0];
        want.extend_from_slice(&[1, 0, 0, 0, b'a', 2, 0, 0, 0, b'x', b'y']);
        want.extend_from_slice(&[1, 0, 0, 0, b'b', 1, 0, 0, 0, b'2']);
        assert_eq!(enc, want);
        assert_eq!(encode_context(&EncryptionContext::new()), vec![0, 0, 0, 0]);
    }

    #[test]
    fn context_encoding_separates_keys_from_values() {
        // Without length prefixes these two would encode alike.
        assert_ne!(
            encode_context(&ctx(&[("ab", "c")])),
            encode_context(&ctx(&[("a", "bc")]))
        );
    }

    #[test]
    fn data_key_debug_redacts() {
        let dk = DataKey::new(Zeroizing::new([0x5a; 32]), vec![0x77; 60], "k@1".into());
        let dbg = format!("{dk:?}");
        assert!(!dbg.contains("5a") && !dbg.contains("90") && !dbg.contains("77"));
        assert!(dbg.contains("k@1") && dbg.contains("<60 bytes>"), "{dbg}");
    }

    #[test]
    fn block_on_drives_a_future_that_wakes_later() {
        let (tx, rx) = std::sync::mpsc::channel::<Waker>();
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f2 = flag.clone();
        let handle = std::thread::spawn(move || {
            let w = rx.recv().unwrap();
            f2.store(true, std::sync::atomic::Ordering::SeqCst);
            w.wake();
        });
        let mut sent = false;
        let out = block_on(std::future::poll_fn(|cx| {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                Poll::Ready(7)
            } else {
                if !sent {
                    tx.send(cx.waker().clone()).unwrap();
                    sent = true;
                }
                Poll::Pending
            }
        }));
        handle.join().unwrap();
        assert_eq!(out, 7);
    }

    proptest::proptest! {
        #[test]
        fn context_encoding_is_injective(
            a in proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4),
            b in proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4),
        ) {
            proptest::prop_assert_eq!(a == b, encode_context(&a) == encode_context(&b));
        }
    }
}
