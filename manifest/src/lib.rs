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
//! # Encoding, format version 1
//!
//! Canonical: one manifest has exactly one encoding, and [`SealedManifest::decode`]
//! rejects every other byte string (non-canonical lengths, padding bits,
//! unsorted context, trailing bytes). Integers are little-endian. `str16`
//! means a `u16` byte length followed by that many bytes of UTF-8.
//!
//! | size | field |
//! |---|---|
//! | 4 | magic `LODM` |
//! | 2 | format version, `u16` = 1 |
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
//! | 32·p + 16 | sealed keys: AES-256-GCM of the `p` chunk keys (32 bytes each, index order) under the data key, nonce = 12 zero bytes, AAD = SHA-256 of all bytes from the magic through the last name; the 16-byte tag last |
//!
//! Nothing follows. Everything up to the last name is the public part.
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
//! use chunk_core::{ChunkKey, ChunkName, ChunkRef};
//! use kms_envelope::{LocalKms, block_on};
//! use manifest::{Manifest, SealedManifest, image_context};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kms = LocalKms::from_keys([("images".to_owned(), 1, [7; 32])])?;
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
//! let bytes = block_on(m.seal(&kms, "images", &ctx))?.encode();
//!
//! // Anyone can list the chunk names, without a key.
//! let sealed = SealedManifest::decode(&bytes)?;
//! assert_eq!(sealed.names().flatten().count(), 2);
//!
//! // Whoever may use the KMS key gets names and keys back.
//! let opened = block_on(sealed.open_with_context(&kms, &ctx))?;
//! assert_eq!(opened, m);
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! None. The KMS backends are chosen in `kms-envelope` (`LocalKms`, and
//! `AwsKms` behind its `aws` feature).

mod error;
mod table;

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
pub use chunk_core::{ChunkKey, ChunkName, ChunkRef};
use kms_envelope::{EncryptionContext, Kms};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use error::{Error, Result};
use table::ChunkTable;
pub use table::Names;

/// The format version this build reads and writes.
pub const FORMAT_VERSION: u16 = 1;

/// The magic bytes every encoded manifest starts with.
pub const MAGIC: [u8; 4] = *b"LODM";

/// The encryption-context key that holds the image name.
pub const IMAGE_CONTEXT_KEY: &str = "lode:image";

const NONCE: [u8; 12] = [0; 12];
const TAG_LEN: usize = 16;

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
            source_ref: self.source_ref.clone(),
            source_digest: self.source_digest.clone(),
            image_size: self.image_size,
            chunk_size: self.chunk_size,
            salt_id: self.salt_id,
            tool_version: self.tool_version.clone(),
        }
    }

    /// Seals the chunk keys under a fresh data key from `kms`, wrapped under
    /// `key_id` and bound to `ctx` (which must contain [`IMAGE_CONTEXT_KEY`]).
    pub async fn seal(
        &self,
        kms: &dyn Kms,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<SealedManifest> {
        self.validate()?;
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
        let digest = public_digest(&public, &names);
        let mut plain = Zeroizing::new(Vec::with_capacity(self.chunks.len() * 32));
        for c in self.chunks.iter().flatten() {
            plain.extend_from_slice(c.key.expose());
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
        let sealed_keys = Aes256Gcm::new(data_key.plaintext().into())
            .encrypt(
                Nonce::from_slice(&NONCE),
                Payload {
                    msg: &plain,
                    aad: &digest,
                },
            )
            .map_err(|_| Error::Invalid {
                reason: "key table too large for AES-GCM".into(),
            })?;
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
    /// The format version (always [`FORMAT_VERSION`] once decoded).
    pub fn format_version(&self) -> u16 {
        FORMAT_VERSION
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
    pub fn public_digest(&self) -> [u8; 32] {
        public_digest(&self.public, &self.names)
    }

    /// Unwraps the data key with `kms` and returns names and keys.
    ///
    /// Uses the context stored in the manifest. Prefer
    /// [`open_with_context`](Self::open_with_context) when you know which
    /// image you expect.
    pub async fn open(&self, kms: &dyn Kms) -> Result<Manifest> {
        let data_key = self.unwrap_data_key(kms).await?;
        let keys = self.open_keys(&data_key)?;
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
        Ok(Manifest {
            source_ref: self.public.source_ref.clone(),
            source_digest: self.public.source_digest.clone(),
            image_size: self.public.image_size,
            chunk_size: self.public.chunk_size,
            salt_id: self.public.salt_id,
            tool_version: self.public.tool_version.clone(),
            chunks,
        })
    }

    /// Like [`open`](Self::open), but first checks that the manifest is bound
    /// to exactly `expected` (for example [`image_context`] of the image the
    /// caller serves); fails with [`Error::WrongContext`] otherwise.
    pub async fn open_with_context(
        &self,
        kms: &dyn Kms,
        expected: &EncryptionContext,
    ) -> Result<Manifest> {
        if &self.context != expected {
            return Err(Error::WrongContext {
                expected: expected.clone(),
                found: self.context.clone(),
            });
        }
        self.open(kms).await
    }

    /// Re-wraps the data key under `new_key_id` (another key, or a new
    /// version after rotation) with the same context. The chunk table and the
    /// sealed keys stay byte for byte; the sealed keys are authenticated
    /// before anything is re-wrapped.
    pub async fn rewrap(&self, kms: &dyn Kms, new_key_id: &str) -> Result<SealedManifest> {
        let data_key = self.unwrap_data_key(kms).await?;
        self.open_keys(&data_key)?;
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

    fn open_keys(&self, data_key: &[u8; 32]) -> Result<Zeroizing<Vec<u8>>> {
        let digest = self.public_digest();
        let keys = Aes256Gcm::new(data_key.into())
            .decrypt(
                Nonce::from_slice(&NONCE),
                Payload {
                    msg: &self.sealed_keys,
                    aad: &digest,
                },
            )
            .map_err(|_| Error::Tampered)?;
        let keys = Zeroizing::new(keys);
        if keys.len() != self.present_count() * 32 {
            return Err(Error::Tampered);
        }
        Ok(keys)
    }

    /// The canonical encoding (see the crate docs for the layout).
    pub fn encode(&self) -> Vec<u8> {
        let present = self.present_count();
        let mut out = Vec::with_capacity(
            128 + self.names.len() / 8
                + present * 64
                + self.key_id.len()
                + self.wrapped.len()
                + self
                    .context
                    .iter()
                    .map(|(k, v)| 4 + k.len() + v.len())
                    .sum::<usize>(),
        );
        encode_public(&mut out, &self.public, &self.names);
        put_str16(&mut out, self.key_id.as_bytes());
        put_u16(&mut out, self.context.len());
        for (k, v) in &self.context {
            put_str16(&mut out, k.as_bytes());
            put_str16(&mut out, v.as_bytes());
        }
        put_str16(&mut out, &self.wrapped);
        out.extend_from_slice(&self.sealed_keys);
        out
    }

    /// Decodes a sealed manifest. Needs no key; checks structure and
    /// canonical form, not authenticity (that is [`open`](Self::open)'s job).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take("magic", 4)? != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = r.u16("format version")?;
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let source_ref = r.str16("source reference")?;
        let source_digest = r.str16("source digest")?;
        let image_size = r.u64("image size")?;
        let at = r.pos;
        let chunk_size = r.u32("chunk size")?;
        let salt_id = r.u32("salt id")?;
        let tool_version = r.str16("tool version")?;
        let count_at = r.pos;
        let count = r.u32("chunk count")?;
        if !is_valid_chunk_size(chunk_size) {
            return Err(r.malformed("chunk size", at, "not a power of two from 4 KiB to 16 MiB"));
        }
        let Some(expected) = chunk_count(image_size, chunk_size) else {
            return Err(r.malformed("chunk size", at, "chunk size is 0"));
        };
        if expected != u64::from(count) {
            return Err(r.malformed(
                "chunk count",
                count_at,
                "does not match image size and chunk size",
            ));
        }
        let count = count as usize;
        let bitmap_at = r.pos;
        let bitmap = r.take("presence bitmap", count.div_ceil(8))?;
        if !count.is_multiple_of(8) && bitmap[bitmap.len() - 1] >> (count % 8) != 0 {
            return Err(r.malformed("presence bitmap", bitmap_at, "padding bits are not zero"));
        }
        let present: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
        let names_bytes = r.take("chunk names", present * 32)?;
        let names = names_bytes
            .chunks_exact(32)
            .map(|n| {
                let mut raw = [0u8; 32];
                raw.copy_from_slice(n);
                ChunkName::from_bytes(raw)
            })
            .collect();
        let names = ChunkTable::from_parts(count, bitmap.to_vec(), names);
        let key_id_at = r.pos;
        let key_id = r.str16("key id")?;
        if key_id.is_empty() {
            return Err(r.malformed("key id", key_id_at, "empty"));
        }
        let ctx_at = r.pos;
        let entries = r.u16("context entry count")?;
        let mut context = EncryptionContext::new();
        let mut last: Option<String> = None;
        for _ in 0..entries {
            let key_at = r.pos;
            let k = r.str16("context key")?;
            let v = r.str16("context value")?;
            if last.as_ref().is_some_and(|l| l.as_bytes() >= k.as_bytes()) {
                return Err(r.malformed("context key", key_at, "keys not strictly ascending"));
            }
            last = Some(k.clone());
            context.insert(k, v);
        }
        if let Err(reason) = check_context(&context) {
            return Err(r.malformed("encryption context", ctx_at, reason));
        }
        let wrapped_at = r.pos;
        let wrapped = r.bytes16("wrapped data key")?.to_vec();
        if wrapped.is_empty() {
            return Err(r.malformed("wrapped data key", wrapped_at, "empty"));
        }
        let sealed_keys = r.take("sealed keys", present * 32 + TAG_LEN)?.to_vec();
        if r.pos != bytes.len() {
            return Err(r.malformed("end", r.pos, "trailing bytes after the sealed keys"));
        }
        Ok(SealedManifest {
            public: PublicPart {
                source_ref,
                source_digest,
                image_size,
                chunk_size,
                salt_id,
                tool_version,
            },
            names,
            key_id,
            context,
            wrapped,
            sealed_keys,
        })
    }
}

fn public_digest(public: &PublicPart, names: &ChunkTable) -> [u8; 32] {
    let mut buf = Vec::with_capacity(128 + names.len() / 8 + names.present() * 32);
    encode_public(&mut buf, public, names);
    Sha256::digest(&buf).into()
}

fn encode_public(out: &mut Vec<u8>, p: &PublicPart, names: &ChunkTable) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    put_str16(out, p.source_ref.as_bytes());
    put_str16(out, p.source_digest.as_bytes());
    out.extend_from_slice(&p.image_size.to_le_bytes());
    out.extend_from_slice(&p.chunk_size.to_le_bytes());
    out.extend_from_slice(&p.salt_id.to_le_bytes());
    put_str16(out, p.tool_version.as_bytes());
    // Validated to fit when sealed or decoded.
    out.extend_from_slice(&(names.len() as u32).to_le_bytes());
    out.extend_from_slice(names.bitmap());
    for n in names.present_names() {
        out.extend_from_slice(n.as_bytes());
    }
}

/// Lengths are validated to fit 16 bits before anything is encoded.
fn put_u16(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v as u16).to_le_bytes());
}

fn put_str16(out: &mut Vec<u8>, s: &[u8]) {
    put_u16(out, s.len());
    out.extend_from_slice(s);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8]> {
        let available = self.bytes.len() - self.pos;
        if n > available {
            return Err(Error::Truncated {
                field,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }
    fn u16(&mut self, field: &'static str) -> Result<u16> {
        self.array(field).map(u16::from_le_bytes)
    }
    fn u32(&mut self, field: &'static str) -> Result<u32> {
        self.array(field).map(u32::from_le_bytes)
    }
    fn u64(&mut self, field: &'static str) -> Result<u64> {
        self.array(field).map(u64::from_le_bytes)
    }
    fn bytes16(&mut self, field: &'static str) -> Result<&'a [u8]> {
        let n = self.u16(field)?;
        self.take(field, usize::from(n))
    }
    fn str16(&mut self, field: &'static str) -> Result<String> {
        let at = self.pos;
        let raw = self.bytes16(field)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| self.malformed(field, at, "not UTF-8"))
    }
    fn malformed(&self, field: &'static str, offset: usize, reason: &'static str) -> Error {
        Error::Malformed {
            field,
            offset,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kms: &dyn Kms) -> SealedManifest {
        let m = Manifest {
            source_ref: "r".into(),
            source_digest: "d".into(),
            image_size: 2 * 4096 + 2,
            chunk_size: 4096,
            salt_id: 9,
            tool_version: "t".into(),
            chunks: vec![
                None,
                Some(ChunkRef {
                    name: ChunkName::from_bytes([1; 32]),
                    key: ChunkKey::from_bytes([2; 32]),
                }),
                None,
            ],
        };
        kms_envelope::block_on(m.seal(kms, "k", &image_context("img"))).unwrap()
    }

    #[test]
    fn layout_offsets_match_docs() {
        let kms = kms_envelope::LocalKms::from_keys([("k".to_owned(), 1, [5; 32])]).unwrap();
        let b = sample(&kms).encode();
        assert_eq!(&b[..4], b"LODM");
        assert_eq!(&b[4..6], &[1, 0]);
        assert_eq!(&b[6..9], &[1, 0, b'r']);
        assert_eq!(&b[9..12], &[1, 0, b'd']);
        assert_eq!(&b[12..20], &8194u64.to_le_bytes());
        assert_eq!(&b[20..24], &4096u32.to_le_bytes());
        assert_eq!(&b[24..28], &9u32.to_le_bytes());
        assert_eq!(&b[28..31], &[1, 0, b't']);
        assert_eq!(&b[31..35], &3u32.to_le_bytes());
        assert_eq!(b[35], 0b010, "bitmap: only chunk 1 present");
        assert_eq!(&b[36..68], &[1; 32]);
        assert_eq!(&b[68..73], &[3, 0, b'k', b'@', b'1']);
        assert_eq!(&b[73..75], &[1, 0]);
        assert_eq!(&b[75..87], b"\x0a\x00lode:image");
        assert_eq!(&b[87..92], b"\x03\x00img");
        let wrapped_len = usize::from(u16::from_le_bytes([b[92], b[93]]));
        assert_eq!(wrapped_len, 4 + 1 + 1 + 4 + 12 + 48);
        assert_eq!(b.len(), 94 + wrapped_len + 32 + 16);
    }

    #[test]
    fn nonzero_bitmap_padding_is_rejected() {
        let kms = kms_envelope::LocalKms::from_keys([("k".to_owned(), 1, [5; 32])]).unwrap();
        let mut b = sample(&kms).encode();
        b[35] |= 0b1000; // bit for index 3 of a 3-chunk image
        assert!(matches!(
            SealedManifest::decode(&b),
            Err(Error::Malformed {
                field: "presence bitmap",
                ..
            })
        ));
    }

    #[test]
    fn seal_rejects_inconsistent_manifests() {
        let kms = kms_envelope::LocalKms::from_keys([("k".to_owned(), 1, [5; 32])]).unwrap();
        let mut m = Manifest {
            source_ref: "r".into(),
            source_digest: "d".into(),
            image_size: 2 * 4096 + 1,
            chunk_size: 4096,
            salt_id: 0,
            tool_version: "t".into(),
            chunks: vec![None, None],
        };
        let seal =
            |m: &Manifest, ctx: &EncryptionContext| kms_envelope::block_on(m.seal(&kms, "k", ctx));
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

    #[test]
    fn chunk_sizes_the_chunker_does_not_cut_are_malformed() {
        let kms = kms_envelope::LocalKms::from_keys([("k".to_owned(), 1, [5; 32])]).unwrap();
        let good = sample(&kms).encode();
        assert!(SealedManifest::decode(&good).is_ok());
        for bad in [
            0u32,
            1,
            16,
            2048,
            4095,
            4097,
            6144,
            512 * 1024 + 1,
            32 << 20,
            u32::MAX,
        ] {
            let mut b = good.clone();
            b[20..24].copy_from_slice(&bad.to_le_bytes());
            match SealedManifest::decode(&b) {
                Err(Error::Malformed {
                    field: "chunk size",
                    offset: 20,
                    ..
                }) => {}
                other => panic!("chunk size {bad}: {other:?}"),
            }
        }
        for ok in [4096u32, 8192, 512 * 1024, 16 << 20] {
            assert!(is_valid_chunk_size(ok), "{ok}");
        }
        for bad in [0u32, 2048, 4095, 3 << 12, 32 << 20] {
            assert!(!is_valid_chunk_size(bad), "{bad}");
        }
    }
}
