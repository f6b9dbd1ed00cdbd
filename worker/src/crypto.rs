//! Opening sealed chunks with `chunk-core`.

use bytes::Bytes;
use chunk_core::{ChunkRef, CryptoProvider};

use crate::error::ChunkError;

/// Checks the name (when `check_name`) and decrypts, in the fetched buffer
/// when it is not shared.
pub(crate) fn open(
    provider: &dyn CryptoProvider,
    chunk: &ChunkRef,
    ciphertext: Bytes,
    check_name: bool,
    tier: &str,
) -> Result<Vec<u8>, ChunkError> {
    if check_name {
        let actual = chunk_core::name_of(provider, &ciphertext);
        if actual != chunk.name {
            return Err(ChunkError::NameMismatch {
                tier: tier.to_owned(),
                actual,
            });
        }
    }
    chunk_core::open_trusted_owned(provider, &chunk.key, Vec::from(ciphertext)).map_err(|e| {
        ChunkError::Decrypt {
            tier: tier.to_owned(),
            source: e,
        }
    })
}
