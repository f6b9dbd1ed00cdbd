//! Opening sealed chunks.
//!
//! Interim implementation of the chunk-core construction (AES-256-GCM with a
//! fixed nonce, name = SHA-256 of the ciphertext) until `chunk_core::open`
//! lands; it is replaced by calls into `chunk-core` then.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use chunk_core::{ChunkKey, ChunkName, ChunkRef};
use sha2::{Digest, Sha256};

use crate::error::ChunkError;

/// SHA-256 of the ciphertext, the chunk's name.
pub(crate) fn name_of(ciphertext: &[u8]) -> ChunkName {
    ChunkName::from_bytes(Sha256::digest(ciphertext).into())
}

/// Checks the name (when `check_name`) and decrypts.
pub(crate) fn open(
    chunk: &ChunkRef,
    ciphertext: &[u8],
    check_name: bool,
    tier: &str,
) -> Result<Vec<u8>, ChunkError> {
    if check_name {
        let actual = name_of(ciphertext);
        if actual != chunk.name {
            return Err(ChunkError::NameMismatch {
                tier: tier.to_owned(),
                actual,
            });
        }
    }
    decrypt(&chunk.key, ciphertext).ok_or_else(|| ChunkError::Decrypt {
        tier: tier.to_owned(),
    })
}

fn decrypt(key: &ChunkKey, ciphertext: &[u8]) -> Option<Vec<u8>> {
    let cipher = Aes256Gcm::new_from_slice(key.expose()).ok()?;
    cipher
        .decrypt(Nonce::from_slice(&[0u8; 12]), ciphertext)
        .ok()
}

/// Seals a plaintext chunk with a key derived by the caller (tests, benches).
#[doc(hidden)]
pub fn seal_with_key(key: ChunkKey, plaintext: &[u8]) -> (ChunkRef, Vec<u8>) {
    let cipher = Aes256Gcm::new_from_slice(key.expose()).expect("32-byte key");
    let ct = cipher
        .encrypt(Nonce::from_slice(&[0u8; 12]), plaintext)
        .expect("AES-GCM encryption of a bounded buffer");
    (
        ChunkRef {
            name: name_of(&ct),
            key,
        },
        ct,
    )
}
