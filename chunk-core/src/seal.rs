//! Convergent sealing and opening of single chunks.

use std::fmt;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::provider::{CryptoProvider, TAG_LEN};
use crate::types::{ChunkKey, ChunkName, ChunkRef, Salt};

/// The GCM nonce of every chunk: twelve zero bytes.
///
/// Safe because every key encrypts exactly one plaintext: the key is the
/// HMAC of that plaintext, so a (key, nonce) pair never meets two messages.
pub const NONCE: [u8; 12] = [0; 12];

/// Additional authenticated data of every chunk (none: the name and salt id
/// live in the manifest, which is authenticated on its own).
const AAD: &[u8] = &[];

/// How many bytes sealing adds to a plaintext (the GCM tag).
pub const CIPHERTEXT_OVERHEAD: usize = TAG_LEN;

/// A sealed chunk: what to store (`name` → `ciphertext`) and what to keep
/// secret in the manifest (`key`).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedChunk {
    /// SHA-256 of `ciphertext`; the object key in stores and caches.
    pub name: ChunkName,
    /// HMAC-SHA256(salt secret, plaintext); the AES-256-GCM key.
    pub key: ChunkKey,
    /// AES-256-GCM(key, nonce = 0, plaintext) with the 16-byte tag appended.
    pub ciphertext: Vec<u8>,
}

impl SealedChunk {
    /// The name and key, as a manifest records them.
    pub fn chunk_ref(&self) -> ChunkRef {
        ChunkRef {
            name: self.name,
            key: self.key.clone(),
        }
    }

    /// Length of the plaintext this chunk decrypts to.
    pub fn plaintext_len(&self) -> usize {
        self.ciphertext.len().saturating_sub(TAG_LEN)
    }
}

impl fmt::Debug for SealedChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedChunk")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// Seals one chunk with convergent encryption.
///
/// key = HMAC-SHA256(salt secret, plaintext); ciphertext = AES-256-GCM(key,
/// [`NONCE`], plaintext) ‖ tag; name = SHA-256(ciphertext). Equal plaintexts
/// under equal salts give equal names, which is what deduplicates.
///
/// The plaintext is copied once into a buffer of its final size and
/// encrypted in place; nothing else is allocated.
pub fn seal(provider: &dyn CryptoProvider, salt: &Salt, plaintext: &[u8]) -> Result<SealedChunk> {
    let key = ChunkKey::from_bytes(provider.hmac_sha256(salt.expose_secret(), plaintext));
    let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buf.extend_from_slice(plaintext);
    provider.aes256gcm_seal_in_place(key.expose(), &NONCE, AAD, &mut buf)?;
    let name = ChunkName::from_bytes(provider.sha256(&buf));
    Ok(SealedChunk {
        name,
        key,
        ciphertext: buf,
    })
}

/// Like [`seal`], but encrypts the caller's buffer in place instead of
/// copying the plaintext; the buffer becomes the ciphertext.
///
/// Copy-free when `plaintext` has room for the 16-byte tag (buffers from
/// [`Chunker::reader`](crate::Chunker::reader) do); otherwise the buffer
/// grows once.
pub fn seal_owned(
    provider: &dyn CryptoProvider,
    salt: &Salt,
    plaintext: Vec<u8>,
) -> Result<SealedChunk> {
    let key = ChunkKey::from_bytes(provider.hmac_sha256(salt.expose_secret(), &plaintext));
    let mut buf = plaintext;
    buf.reserve_exact(TAG_LEN);
    provider.aes256gcm_seal_in_place(key.expose(), &NONCE, AAD, &mut buf)?;
    let name = ChunkName::from_bytes(provider.sha256(&buf));
    Ok(SealedChunk {
        name,
        key,
        ciphertext: buf,
    })
}

/// Seals many chunks on all cores (rayon's global pool); the output is in
/// input order. Fails with the first error in input order.
pub fn seal_batch(
    provider: &dyn CryptoProvider,
    salt: &Salt,
    plaintexts: &[&[u8]],
) -> Result<Vec<SealedChunk>> {
    plaintexts
        .par_iter()
        .map(|p| seal(provider, salt, p))
        .collect()
}

/// The name `ciphertext` is stored under: its SHA-256.
pub fn name_of(provider: &dyn CryptoProvider, ciphertext: &[u8]) -> ChunkName {
    ChunkName::from_bytes(provider.sha256(ciphertext))
}

/// Checks that `ciphertext` hashes to `expected`; needs no key, so stores,
/// caches and GC can use it.
pub fn verify_name(
    provider: &dyn CryptoProvider,
    expected: &ChunkName,
    ciphertext: &[u8],
) -> Result<()> {
    let actual = name_of(provider, ciphertext);
    if actual == *expected {
        Ok(())
    } else {
        Err(Error::NameMismatch {
            expected: *expected,
            actual,
        })
    }
}

/// Opens a chunk fetched from a store or a shared cache.
///
/// Checks first that `ciphertext` hashes to `chunk.name` (what came back is
/// what was asked for), then decrypts and authenticates it under
/// `chunk.key`. Any mismatch is an error; wrong plaintext is never returned.
pub fn open(provider: &dyn CryptoProvider, chunk: &ChunkRef, ciphertext: &[u8]) -> Result<Vec<u8>> {
    verify_name(provider, &chunk.name, ciphertext)?;
    decrypt(provider, &chunk.key, ciphertext.to_vec(), Some(chunk.name))
}

/// Like [`open`], but decrypts in the caller's buffer instead of copying it.
pub fn open_owned(
    provider: &dyn CryptoProvider,
    chunk: &ChunkRef,
    ciphertext: Vec<u8>,
) -> Result<Vec<u8>> {
    verify_name(provider, &chunk.name, &ciphertext)?;
    decrypt(provider, &chunk.key, ciphertext, Some(chunk.name))
}

/// Opens bytes whose name the caller has already verified (for example a
/// worker's local cache, which checked the name when it stored them).
///
/// Skips only the name check: GCM still authenticates the ciphertext under
/// `key`, so altered bytes are still an error.
pub fn open_trusted(
    provider: &dyn CryptoProvider,
    key: &ChunkKey,
    ciphertext: &[u8],
) -> Result<Vec<u8>> {
    decrypt(provider, key, ciphertext.to_vec(), None)
}

/// Like [`open_trusted`], but decrypts in the caller's buffer.
pub fn open_trusted_owned(
    provider: &dyn CryptoProvider,
    key: &ChunkKey,
    ciphertext: Vec<u8>,
) -> Result<Vec<u8>> {
    decrypt(provider, key, ciphertext, None)
}

fn decrypt(
    provider: &dyn CryptoProvider,
    key: &ChunkKey,
    mut buf: Vec<u8>,
    name: Option<ChunkName>,
) -> Result<Vec<u8>> {
    if buf.len() < TAG_LEN {
        return Err(Error::CiphertextTooShort {
            name,
            len: buf.len(),
        });
    }
    let len = buf.len();
    match provider.aes256gcm_open_in_place(key.expose(), &NONCE, AAD, &mut buf) {
        // Belt and braces: a backend that "succeeds" without stripping the
        // tag would hand back wrong plaintext.
        Ok(()) if buf.len() == len - TAG_LEN => Ok(buf),
        Ok(()) => Err(Error::Crypto {
            provider: provider.name(),
            operation: "aes256gcm_open",
        }),
        Err(Error::Decrypt { .. }) => Err(Error::Decrypt { name }),
        Err(Error::CiphertextTooShort { len, .. }) => Err(Error::CiphertextTooShort { name, len }),
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_chunk_debug_hides_key_and_ciphertext() {
        let chunk = SealedChunk {
            name: ChunkName::from_bytes([1; 32]),
            key: ChunkKey::from_bytes([0x77; 32]),
            ciphertext: vec![0x99; 40],
        };
        let text = format!("{chunk:?}");
        assert!(!text.contains("77") && !text.contains("99"), "{text}");
        assert!(text.contains("ciphertext_len: 40"), "{text}");
        assert_eq!(chunk.plaintext_len(), 24);
        assert_eq!(chunk.chunk_ref().name, chunk.name);
    }
}
