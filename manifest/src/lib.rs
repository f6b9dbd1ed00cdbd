//! Image manifests for lode: which chunks make an image, and the keys to open
//! them, sealed under a KMS.
//!
//! A [`Manifest`] lists, for every fixed-size chunk of an image, either the
//! chunk's [`ChunkRef`] (name and key) or a hole. [`Manifest::seal`] turns it
//! into a [`SealedManifest`]:
//!
//! - the **public part** (format version, source reference and digest, image
//!   size, chunk size, salt id, tool version, and per chunk a name or a hole)
//!   stays readable, so garbage collection and audits need no KMS
//!   ([`SealedManifest::decode`], [`SealedManifest::names`]);
//! - the **sealed part** holds the chunk keys, AES-256-GCM-encrypted under a
//!   fresh data key with AAD = SHA-256 of the public part, so keys can never be
//!   moved to another manifest or reordered;
//! - the **envelope** holds the KMS key id, the encryption context and the data
//!   key wrapped by the KMS ([`kms_envelope::Kms`]).
//!
//! [`SealedManifest::open`] unwraps the data key and returns the full
//! [`Manifest`]; [`SealedManifest::rewrap`] re-wraps the data key under another
//! KMS key or version without touching the chunk table or the sealed keys.
//!
//! # How the encryption context is bound
//!
//! The context must contain the image name under [`IMAGE_CONTEXT_KEY`]
//! (`lode:image`); [`image_context`] builds one. The context is stored in the
//! envelope in clear (it is not secret) and passed to the KMS on every wrap and
//! unwrap: the KMS binds the wrapped data key to it (for `LocalKms` as GCM
//! AAD, for AWS KMS as `EncryptionContext`), so changing one byte of it makes
//! the KMS refuse ([`Error::Unwrap`]). A worker that serves image `X` calls
//! [`SealedManifest::open_with_context`] with `image_context("X")`, which fails
//! with [`Error::WrongContext`] before contacting the KMS when the manifest is
//! bound to another image. The key id in the envelope is checked by the KMS
//! too ([`kms_envelope::Kms::decrypt_with_key`]).
//!
//! # Encoding, format version 2
//!
//! Canonical: one manifest has exactly one encoding, and [`SealedManifest::decode`]
//! rejects every other byte string (non-canonical lengths, padding bits,
//! unsorted context, trailing bytes). Integers are little-endian. `str16`
//! means a `u16` byte length followed by that many bytes of UTF-8.
//!
//! | size | field |
//! |---|---|
//! | 4 | magic `LODM` |
//! | 2 | format version, `u16` = 2 (1 is still read, see below) |
//! | str16 | source image reference, e.g. `oci:/images:python-app` |
//! | str16 | source digest, e.g. `sha256:…` of the image manifest |
//! | 8 | image size in bytes, `u64` |
//! | 4 | chunk size in bytes, `u32`: a power of two from 4 KiB to 16 MiB (what `chunk_core::Chunker` accepts) |
//! | 4 | salt id, `u32` |
//! | str16 | creating tool and version, e.g. `lode 0.1.0` |
//! | 4 | chunk count `n`, `u32`; must equal ⌈image size / chunk size⌉ |
//! | ⌈n/8⌉ | presence bitmap: bit `i % 8` (least significant first) of byte `i / 8` is 1 when chunk `i` is present, 0 for a hole; unused bits of the last byte are 0 |
//! | 32·p | names (SHA-256 of the ciphertext) of the `p` present chunks, in index order |
//! | str16 | KMS key id, resolved (with version where the KMS has one) |
//! | 2 | context entry count `c`, `u16`, at least 1 |
//! | c × (str16, str16) | context keys and values, keys strictly ascending by bytes; must include `lode:image` with a non-empty value |
//! | 2 + w | wrapped data key: `u16` length `w` (at least 1), then the KMS's blob |
//! | 4 | sealed part length `s`, `u32`, at least 32·p + 1 + 16 |
//! | s | sealed part: AES-256-GCM of the `p` chunk keys (32 bytes each, index order) followed by the image config (one byte `0`: none; or `1` and the [`ImageConfig`] encoding), under the data key, nonce = 12 zero bytes, AAD = SHA-256 of all bytes from the magic through the last name; the 16-byte tag last |
//!
//! Nothing follows. Everything up to the last name is the public part.
//!
//! **Format version 1** is the same without the sealed part length, and the
//! sealed part is exactly the `p` keys and the tag (32·p + 16 bytes): no
//! image config. Such manifests still decode and open (config `None`), and
//! keep version 1 when re-wrapped; new ones are always sealed as version 2.
//!
//! The image config (entrypoint, cmd, env, working dir, user, stop signal,
//! labels, exposed ports, platform) is sealed rather than public because
//! `Env` often holds secrets: reading it needs the KMS, like the keys
//! ([`SealedManifest::open_with_config`]).
//!
//! The nonce is fixed because every data key encrypts exactly one message:
//! [`Manifest::seal`] always asks the KMS for a fresh data key, and
//! [`SealedManifest::rewrap`] re-wraps the same data key without encrypting
//! anything new.
//!
//! Size: 64⅛ bytes per present chunk (name, sealed key, presence bit), ⅛
//! byte per hole, plus a fixed part: 16 tag bytes, the strings, the context
//! and the KMS blob (`LocalKms`: 69 bytes plus the key name). A 10 GiB image
//! (20,480 chunks of 512 KiB, none a hole) seals to about 1.31 MB with
//! `LocalKms`: 64.1 bytes per chunk.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "rustcrypto")] {
//! use chunk_core::{ChunkKey, ChunkName, ChunkRef};
//! use kms_envelope::{LocalKms, block_on};
//! use manifest::{Manifest, SealedManifest, image_context};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One crypto backend for chunks, manifests and the keyring (or chunk_core::AwsLc).
//! let provider = &chunk_core::RustCrypto;
//! let kms = LocalKms::from_keys(provider, [("images".to_owned(), 1, [7; 32])])?;
//! let m = Manifest {
//!     source_ref: "oci:/images:python-app".into(),
//!     source_digest: "sha256:0123".into(),
//!     image_size: 3 * 524_288,
//!     chunk_size: 524_288,
//!     salt_id: 1,
//!     tool_version: "lode 0.1.0".into(),
//!     chunks: vec![
//!         Some(ChunkRef { name: ChunkName::from_bytes([1; 32]), key: ChunkKey::from_bytes([2; 32]) }),
//!         None, // an all-zero chunk: a hole
//!         Some(ChunkRef { name: ChunkName::from_bytes([3; 32]), key: ChunkKey::from_bytes([4; 32]) }),
//!     ],
//! };
//! let ctx = image_context("python-app");
//! let bytes = block_on(m.seal(provider, &kms, "images", &ctx))?.encode();
//!
//! // Anyone can list the chunk names, without a key.
//! let sealed = SealedManifest::decode(&bytes)?;
//! assert_eq!(sealed.names().flatten().count(), 2);
//!
//! // Whoever may use the KMS key gets names and keys back.
//! let opened = block_on(sealed.open_with_context(provider, &kms, &ctx))?;
//! assert_eq!(opened, m);
//! # Ok(())
//! # }
//! # main().unwrap();
//! # }
//! ```
//!
//! # Crypto
//!
//! SHA-256 and AES-256-GCM run on the [`chunk_core::CryptoProvider`] the
//! caller passes to [`Manifest::seal`], [`SealedManifest::open`] and
//! friends: the same backend as the chunks, so `--crypto aws-lc-rs` covers
//! manifests too. Every backend computes the same bytes (the golden tests
//! run against each).
//!
//! # Features
//!
//! - `rustcrypto` (default), `aws-lc-rs`: which `chunk-core` backends are
//!   compiled in (and so run by the tests).
//!
//! The KMS backends are chosen in `kms-envelope` (`LocalKms`, and `AwsKms`
//! behind its `aws` feature).

mod codec;
mod config;
mod error;
mod table;

use std::fmt;

pub use chunk_core::{ChunkKey, ChunkName, ChunkRef};
use chunk_core::{CryptoProvider, TAG_LEN};
use kms_envelope::{EncryptionContext, Kms};
use zeroize::Zeroizing;

use codec::encode_public;
pub use config::ImageConfig;
pub use error::{Error, Result};
use table::ChunkTable;
pub use table::Names;

/// The format version this build writes (it reads this and every older one,
/// down to [`OLDEST_FORMAT_VERSION`]).
pub const FORMAT_VERSION: u16 = 2;

/// The oldest format version this build reads: version 1, which has no
/// sealed image config.
pub const OLDEST_FORMAT_VERSION: u16 = 1;

/// The magic bytes every encoded manifest starts with.
pub const MAGIC: [u8; 4] = *b"LODM";

/// The encryption-context key that holds the image name.
pub const IMAGE_CONTEXT_KEY: &str = "lode:image";

const NONCE: [u8; 12] = [0; 12];

/// The encryption context for image `name`: `{"lode:image": name}`.
pub fn image_context(name: &str) -> EncryptionContext {
    EncryptionContext::from([(IMAGE_CONTEXT_KEY.to_owned(), name.to_owned())])
}

/// An image manifest with chunk names and keys (the opened form).
///
/// `Debug` prints chunk names, never keys.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Manifest {
    /// Where the image came from, e.g. `oci:/images:python-app`.
    pub source_ref: String,
    /// Digest of the source image, e.g. `sha256:…`.
    pub source_digest: String,
    /// Size of the flattened image in bytes.
    pub image_size: u64,
    /// Chunk size in bytes (lode uses 512 KiB); a power of two from 4 KiB to
    /// 16 MiB ([`is_valid_chunk_size`]).
    pub chunk_size: u32,
    /// Public id of the salt the chunk keys were derived with.
    pub salt_id: u32,
    /// The tool and version that made the manifest, e.g. `lode 0.1.0`.
    pub tool_version: String,
    /// One entry per chunk index: its name and key, or `None` for a hole
    /// (an all-zero chunk that is not stored).
    pub chunks: Vec<Option<ChunkRef>>,
}

/// Whether `chunk_size` is one a manifest may carry: a power of two from
/// [`chunk_core::MIN_CHUNK_SIZE`] (4 KiB) to [`chunk_core::MAX_CHUNK_SIZE`]
/// (16 MiB), the sizes `chunk_core::Chunker` cuts.
pub fn is_valid_chunk_size(chunk_size: u32) -> bool {
    chunk_size.is_power_of_two()
        && (chunk_core::MIN_CHUNK_SIZE..=chunk_core::MAX_CHUNK_SIZE)
            .contains(&(chunk_size as usize))
}

/// The number of chunks an image of `image_size` bytes has.
pub fn chunk_count(image_size: u64, chunk_size: u32) -> Option<u64> {
    (chunk_size != 0).then(|| image_size.div_ceil(u64::from(chunk_size)))
}

impl Manifest {
    /// Checks the manifest can be encoded: chunk count matches image and
    /// chunk size, strings fit their length fields.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::Invalid { reason });
        if !is_valid_chunk_size(self.chunk_size) {
            return invalid(format!(
                "chunk size {} is not a power of two from 4 KiB to 16 MiB",
                self.chunk_size
            ));
        }
        let Some(expected) = chunk_count(self.image_size, self.chunk_size) else {
            return invalid("chunk size is 0".into());
        };
        if expected != self.chunks.len() as u64 {
            return invalid(format!(
                "{} chunk entries for an image of {} bytes in chunks of {} (expected {expected})",
                self.chunks.len(),
                self.image_size,
                self.chunk_size
            ));
        }
        if u32::try_from(expected).is_err() {
            return invalid("more than 2^32 - 1 chunks".into());
        }
        for (field, s) in [
            ("source reference", &self.source_ref),
            ("source digest", &self.source_digest),
            ("tool version", &self.tool_version),
        ] {
            if s.len() > usize::from(u16::MAX) {
                return invalid(format!("{field} longer than 65535 bytes"));
            }
        }
        Ok(())
    }

    /// The names of all chunk indexes (`None` for holes). No keys.
    pub fn names(&self) -> impl ExactSizeIterator<Item = Option<ChunkName>> + '_ {
        self.chunks.iter().map(|c| c.as_ref().map(|r| r.name))
    }

    fn public_part(&self) -> PublicPart {
        PublicPart {
            version: FORMAT_VERSION,
            source_ref: self.source_ref.clone(),
            source_digest: self.source_digest.clone(),
            image_size: self.image_size,
            chunk_size: self.chunk_size,
            salt_id: self.salt_id,
            tool_version: self.tool_version.clone(),
        }
    }

    /// Seals the chunk keys under a fresh data key from `kms`, wrapped under
    /// `key_id` and bound to `ctx` (which must contain [`IMAGE_CONTEXT_KEY`]),
    /// with no image config. Same as [`seal_with_config`](Self::seal_with_config)
    /// with `None`.
    ///
    /// `provider` runs the SHA-256 and AES-256-GCM (the same choice of
    /// backend as for the chunks).
    pub async fn seal(
        &self,
        provider: &dyn CryptoProvider,
        kms: &dyn Kms,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<SealedManifest> {
        self.seal_with_config(provider, kms, key_id, ctx, None)
            .await
    }

    /// Like [`seal`](Self::seal), and seals `config` (how the image runs;
    /// its `Env` may hold secrets) with the chunk keys.
    pub async fn seal_with_config(
        &self,
        provider: &dyn CryptoProvider,
        kms: &dyn Kms,
        key_id: &str,
        ctx: &EncryptionContext,
        config: Option<&ImageConfig>,
    ) -> Result<SealedManifest> {
        self.validate()?;
        if let Some(c) = config {
            c.validate()?;
        }
        let mut config_bytes = Zeroizing::new(Vec::new());
        match config {
            None => config_bytes.push(0),
            Some(c) => {
                config_bytes.push(1);
                c.encode(&mut config_bytes);
            }
        }
        check_context(ctx).map_err(|reason| Error::Invalid {
            reason: reason.into(),
        })?;
        if key_id.is_empty() || key_id.len() > usize::from(u16::MAX) {
            return Err(Error::Invalid {
                reason: "key id must be 1 to 65535 bytes".into(),
            });
        }
        let names = ChunkTable::from_options(self.names());
        let public = self.public_part();
        let digest = public_digest(provider, &public, &names);
        // Room for the tag up front: the buffer is sealed in place and must
        // not reallocate, which would leave a copy of the keys behind.
        let mut keys = Zeroizing::new(Vec::with_capacity(
            self.chunks.len() * 32 + config_bytes.len() + TAG_LEN,
        ));
        for c in self.chunks.iter().flatten() {
            keys.extend_from_slice(c.key.expose());
        }
        keys.extend_from_slice(&config_bytes);
        if u32::try_from(keys.len() + TAG_LEN).is_err() {
            return Err(Error::Invalid {
                reason: "chunk keys and image config longer than 2^32 - 1 bytes".into(),
            });
        }
        let data_key = kms
            .generate_data_key(key_id, ctx)
            .await
            .map_err(|e| kms_error(key_id, "generating", e))?;
        if data_key.wrapped.is_empty() || data_key.wrapped.len() > usize::from(u16::MAX) {
            return Err(Error::Invalid {
                reason: "the KMS returned an empty or overlong wrapped key".into(),
            });
        }
        if data_key.key_id.is_empty() || data_key.key_id.len() > usize::from(u16::MAX) {
            return Err(Error::Invalid {
                reason: "the KMS resolved the key id to an empty or overlong id".into(),
            });
        }
        provider
            .aes256gcm_seal_in_place(data_key.plaintext(), &NONCE, &digest, &mut keys)
            .map_err(|source| Error::Crypto {
                operation: "sealing",
                source,
            })?;
        // Now ciphertext and tag; nothing secret left in it.
        let sealed_keys = std::mem::take(&mut *keys);
        Ok(SealedManifest {
            public,
            names,
            key_id: data_key.key_id.clone(),
            context: ctx.clone(),
            wrapped: data_key.wrapped.clone(),
            sealed_keys,
        })
    }
}

/// Checks the envelope rules for a context; returns the reason when broken.
fn check_context(ctx: &EncryptionContext) -> std::result::Result<(), &'static str> {
    match ctx.get(IMAGE_CONTEXT_KEY) {
        Some(v) if !v.is_empty() => {}
        _ => return Err("encryption context must name the image under `lode:image`"),
    }
    if ctx.len() > usize::from(u16::MAX)
        || ctx
            .iter()
            .any(|(k, v)| k.len() > usize::from(u16::MAX) || v.len() > usize::from(u16::MAX))
    {
        return Err("encryption context too large");
    }
    Ok(())
}

/// Maps a KMS error of `operation` (`"generating"`, `"wrapping"`,
/// `"unwrapping"`) under `key_id`.
fn kms_error(key_id: &str, operation: &'static str, e: kms_envelope::Error) -> Error {
    match e {
        e @ kms_envelope::Error::KeyNotFound { .. } => Error::WrongKey {
            key_id: key_id.to_owned(),
            source: e,
        },
        e @ kms_envelope::Error::CannotUnwrap { .. } => Error::Unwrap {
            key_id: key_id.to_owned(),
            source: e,
        },
        source => Error::Kms {
            key_id: key_id.to_owned(),
            operation,
            source,
        },
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
struct PublicPart {
    /// The format version the manifest was sealed with (kept on re-wrap).
    version: u16,
    source_ref: String,
    source_digest: String,
    image_size: u64,
    chunk_size: u32,
    salt_id: u32,
    tool_version: String,
}

/// A sealed manifest: public chunk table, envelope and sealed keys.
///
/// Decoding and reading the names need no key. `Debug` shows the public
/// fields and sizes, never the wrapped key or the sealed keys.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedManifest {
    public: PublicPart,
    names: ChunkTable,
    key_id: String,
    context: EncryptionContext,
    wrapped: Vec<u8>,
    sealed_keys: Vec<u8>,
}

impl fmt::Debug for SealedManifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedManifest")
            .field("source_ref", &self.public.source_ref)
            .field("source_digest", &self.public.source_digest)
            .field("image_size", &self.public.image_size)
            .field("chunk_size", &self.public.chunk_size)
            .field("salt_id", &self.public.salt_id)
            .field("tool_version", &self.public.tool_version)
            .field("chunks", &self.names.len())
            .field("present", &self.present_count())
            .field("key_id", &self.key_id)
            .field("context", &self.context)
            .field("wrapped", &format_args!("<{} bytes>", self.wrapped.len()))
            .field(
                "sealed_keys",
                &format_args!("<{} bytes>", self.sealed_keys.len()),
            )
            .finish()
    }
}

impl SealedManifest {
    /// Where the image came from.
    pub fn source_ref(&self) -> &str {
        &self.public.source_ref
    }
    /// Digest of the source image.
    pub fn source_digest(&self) -> &str {
        &self.public.source_digest
    }
    /// Image size in bytes.
    pub fn image_size(&self) -> u64 {
        self.public.image_size
    }
    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u32 {
        self.public.chunk_size
    }
    /// Public id of the salt.
    pub fn salt_id(&self) -> u32 {
        self.public.salt_id
    }
    /// The tool and version that made the manifest.
    pub fn tool_version(&self) -> &str {
        &self.public.tool_version
    }
    /// The format version it was sealed with: 1 (no image config) up to
    /// [`FORMAT_VERSION`].
    pub fn format_version(&self) -> u16 {
        self.public.version
    }
    /// Number of chunk indexes, holes included.
    pub fn chunk_count(&self) -> usize {
        self.names.len()
    }
    /// Number of stored (non-hole) chunks.
    pub fn present_count(&self) -> usize {
        self.names.present()
    }
    /// The name of chunk `index`: `None` for a hole or an index past the end.
    pub fn name(&self, index: usize) -> Option<ChunkName> {
        self.names.get(index)
    }
    /// The names of all chunk indexes, `None` for holes. Needs no key.
    pub fn names(&self) -> Names<'_> {
        self.names.iter()
    }
    /// The resolved KMS key id the data key is wrapped under.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
    /// The encryption context the data key is bound to.
    pub fn context(&self) -> &EncryptionContext {
        &self.context
    }
    /// The data key as wrapped by the KMS (opaque; not secret by itself).
    pub fn wrapped_data_key(&self) -> &[u8] {
        &self.wrapped
    }
    /// The image name from the encryption context.
    pub fn image_name(&self) -> &str {
        self.context
            .get(IMAGE_CONTEXT_KEY)
            .map(String::as_str)
            .unwrap_or_default()
    }
    /// SHA-256 of the public part: the AAD of the sealed keys, and a stable
    /// identity of the chunk table that does not change on [`rewrap`](Self::rewrap).
    pub fn public_digest(&self, provider: &dyn CryptoProvider) -> [u8; 32] {
        public_digest(provider, &self.public, &self.names)
    }

    /// Unwraps the data key with `kms` and returns names and keys.
    ///
    /// Uses the context stored in the manifest. Prefer
    /// [`open_with_context`](Self::open_with_context) when you know which
    /// image you expect.
    ///
    /// `provider` runs the SHA-256 and AES-256-GCM.
    pub async fn open(&self, provider: &dyn CryptoProvider, kms: &dyn Kms) -> Result<Manifest> {
        Ok(self.open_all(provider, kms).await?.0)
    }

    /// Like [`open_with_context`](Self::open_with_context), and also returns
    /// the sealed image config (`None` for format 1, or when the pusher had
    /// none).
    pub async fn open_with_config(
        &self,
        provider: &dyn CryptoProvider,
        kms: &dyn Kms,
        expected: &EncryptionContext,
    ) -> Result<(Manifest, Option<ImageConfig>)> {
        self.check_context(expected)?;
        self.open_all(provider, kms).await
    }

    async fn open_all(
        &self,
        provider: &dyn CryptoProvider,
        kms: &dyn Kms,
    ) -> Result<(Manifest, Option<ImageConfig>)> {
        let data_key = self.unwrap_data_key(kms).await?;
        let plain = self.open_keys(provider, &data_key)?;
        let (keys, config) = plain.split_at(self.present_count() * 32);
        let config = match (self.public.version, config) {
            (1, []) => None,
            (_, [0]) => None,
            (v, [1, rest @ ..]) if v >= 2 => Some(ImageConfig::decode(rest)?),
            _ => {
                return Err(Error::MalformedConfig {
                    field: "presence flag",
                    offset: 0,
                    reason: "not 0 or 1",
                });
            }
        };
        let mut keys = keys.chunks_exact(32);
        let mut chunks = Vec::with_capacity(self.names.len());
        for name in self.names.iter() {
            chunks.push(match name {
                Some(name) => {
                    let mut key = Zeroizing::new([0u8; 32]);
                    key.copy_from_slice(keys.next().ok_or(Error::Tampered)?);
                    Some(ChunkRef {
                        name,
                        key: ChunkKey::from_bytes(*key),
                    })
                }
                None => None,
            });
        }
        let manifest = Manifest {
            source_ref: self.public.source_ref.clone(),
            source_digest: self.public.source_digest.clone(),
            image_size: self.public.image_size,
            chunk_size: self.public.chunk_size,
            salt_id: self.public.salt_id,
            tool_version: self.public.tool_version.clone(),
            chunks,
        };
        Ok((manifest, config))
    }

    /// Like [`open`](Self::open), but first checks that the manifest is bound
    /// to exactly `expected` (for example [`image_context`] of the image the
    /// caller serves); fails with [`Error::WrongContext`] otherwise.
    pub async fn open_with_context(
        &self,
        provider: &dyn CryptoProvider,
        kms: &dyn Kms,
        expected: &EncryptionContext,
    ) -> Result<Manifest> {
        self.check_context(expected)?;
        self.open(provider, kms).await
    }

    fn check_context(&self, expected: &EncryptionContext) -> Result<()> {
        if &self.context != expected {
            return Err(Error::WrongContext {
                expected: expected.clone(),
                found: self.context.clone(),
            });
        }
        Ok(())
    }

    /// Re-wraps the data key under `new_key_id` (another key, or a new
    /// version after rotation) with the same context. The chunk table and the
    /// sealed keys stay byte for byte; the sealed keys are authenticated
    /// before anything is re-wrapped.
    pub async fn rewrap(
        &self,
        provider: &dyn CryptoProvider,
        kms: &dyn Kms,
        new_key_id: &str,
    ) -> Result<SealedManifest> {
        let data_key = self.unwrap_data_key(kms).await?;
        self.open_keys(provider, &data_key)?;
        let wrapped = kms
            .encrypt(new_key_id, &data_key, &self.context)
            .await
            .map_err(|e| kms_error(new_key_id, "wrapping", e))?;
        if wrapped.wrapped.is_empty()
            || wrapped.wrapped.len() > usize::from(u16::MAX)
            || wrapped.key_id.is_empty()
            || wrapped.key_id.len() > usize::from(u16::MAX)
        {
            return Err(Error::Invalid {
                reason: "the KMS returned an empty or overlong key id or blob".into(),
            });
        }
        Ok(SealedManifest {
            key_id: wrapped.key_id,
            wrapped: wrapped.wrapped,
            ..self.clone()
        })
    }

    async fn unwrap_data_key(&self, kms: &dyn Kms) -> Result<Zeroizing<[u8; 32]>> {
        kms.decrypt_with_key(&self.key_id, &self.wrapped, &self.context)
            .await
            .map_err(|e| kms_error(&self.key_id, "unwrapping", e))
    }

    fn open_keys(
        &self,
        provider: &dyn CryptoProvider,
        data_key: &[u8; 32],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let digest = self.public_digest(provider);
        let mut keys = Zeroizing::new(self.sealed_keys.clone());
        provider
            .aes256gcm_open_in_place(data_key, &NONCE, &digest, &mut keys)
            .map_err(|_| Error::Tampered)?;
        if keys.len() < self.present_count() * 32 {
            return Err(Error::Tampered);
        }
        Ok(keys)
    }
}

fn public_digest(
    provider: &dyn CryptoProvider,
    public: &PublicPart,
    names: &ChunkTable,
) -> [u8; 32] {
    let mut buf = Vec::with_capacity(128 + names.len() / 8 + names.present() * 32);
    encode_public(&mut buf, public, names);
    provider.sha256(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_rejects_inconsistent_manifests() {
        for &p in chunk_core::enabled_providers() {
            let kms = kms_envelope::LocalKms::from_keys(p, [("k".to_owned(), 1, [5; 32])]).unwrap();
            let mut m = Manifest {
                source_ref: "r".into(),
                source_digest: "d".into(),
                image_size: 2 * 4096 + 1,
                chunk_size: 4096,
                salt_id: 0,
                tool_version: "t".into(),
                chunks: vec![None, None],
            };
            let seal = |m: &Manifest, ctx: &EncryptionContext| {
                kms_envelope::block_on(m.seal(p, &kms, "k", ctx))
            };
            assert!(matches!(
                seal(&m, &image_context("i")),
                Err(Error::Invalid { .. })
            ));
            m.chunks.push(None);
            assert!(seal(&m, &image_context("i")).is_ok());
            assert!(matches!(
                seal(&m, &EncryptionContext::new()),
                Err(Error::Invalid { .. })
            ));
            assert!(matches!(
                seal(&m, &image_context("")),
                Err(Error::Invalid { .. })
            ));
            for bad in [0, 4, 2048, 4095, 4097, 3 << 12, 32 << 20] {
                m.chunk_size = bad;
                assert!(
                    matches!(seal(&m, &image_context("i")), Err(Error::Invalid { .. })),
                    "chunk size {bad}"
                );
            }
        }
    }
}
