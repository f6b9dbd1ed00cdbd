//! Errors of `chunk-core`.
//!
//! No variant ever carries key or salt bytes: errors end up in logs.

use crate::types::ChunkName;

/// Everything that can go wrong while chunking, sealing or opening.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string that should have been a chunk name was not 64 lowercase hex digits.
    #[error("invalid chunk name {input:?}: expected 64 lowercase hex digits")]
    InvalidName {
        /// The offending input (truncated).
        input: String,
    },

    /// The bytes handed to `open` do not hash to the name that was asked for:
    /// a store or cache returned the wrong object, or a corrupted one.
    #[error("chunk name mismatch: expected {expected}, ciphertext hashes to {actual}")]
    NameMismatch {
        /// The name the caller asked for.
        expected: ChunkName,
        /// SHA-256 of the bytes actually received.
        actual: ChunkName,
    },

    /// AES-256-GCM authentication failed: wrong key or altered ciphertext.
    /// No plaintext is returned.
    #[error("chunk {} failed authentication (wrong key or altered ciphertext)", display_name(.name))]
    Decrypt {
        /// The chunk's name when the caller gave one (`None` for `open_trusted`).
        name: Option<ChunkName>,
    },

    /// A ciphertext shorter than the 16-byte GCM tag cannot be a sealed chunk.
    #[error("chunk {} is {len} bytes, shorter than the 16-byte authentication tag", display_name(.name))]
    CiphertextTooShort {
        /// The chunk's name when known.
        name: Option<ChunkName>,
        /// Length of the bytes received.
        len: usize,
    },

    /// A chunk size that is not a power of two between 4 KiB and 16 MiB.
    #[error(
        "invalid chunk size {size}: must be a power of two from {min} to {max} bytes",
        min = crate::chunker::MIN_CHUNK_SIZE,
        max = crate::chunker::MAX_CHUNK_SIZE
    )]
    InvalidChunkSize {
        /// The size that was asked for.
        size: usize,
    },

    /// Reading the input of a chunker failed.
    #[error("reading chunker input at byte offset {offset}")]
    Io {
        /// Offset in the input of the chunk being read.
        offset: u64,
        /// What the reader reported.
        #[source]
        source: std::io::Error,
    },

    /// The crypto backend refused an operation (for example a plaintext
    /// beyond AES-GCM's length limit).
    #[error("crypto backend {provider} failed in {operation}")]
    Crypto {
        /// Which backend (`rustcrypto`, `aws-lc-rs`, ...).
        provider: &'static str,
        /// Which operation (`aes256gcm_seal`, ...).
        operation: &'static str,
    },

    /// The backend could not produce random bytes.
    #[error("crypto backend {provider} could not produce random bytes")]
    Random {
        /// Which backend.
        provider: &'static str,
        /// The operating system's error, when the backend reports one.
        #[source]
        source: Option<std::io::Error>,
    },
}

fn display_name(name: &Option<ChunkName>) -> String {
    match name {
        Some(name) => name.to_hex(),
        None => "<unnamed>".to_owned(),
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_chunk_and_keep_sources() {
        let name = ChunkName::from_bytes([0x11; 32]);
        let e = Error::Decrypt { name: Some(name) };
        assert!(e.to_string().contains(&"11".repeat(32)), "{e}");
        let e = Error::Decrypt { name: None };
        assert!(e.to_string().contains("<unnamed>"), "{e}");

        let io = std::io::Error::other("disk on fire");
        let e = Error::Io {
            offset: 4096,
            source: io,
        };
        assert!(e.to_string().contains("4096"));
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("disk on fire"));

        let e = Error::InvalidChunkSize { size: 1000 };
        assert!(e.to_string().contains("1000") && e.to_string().contains("4096"));
    }
}
