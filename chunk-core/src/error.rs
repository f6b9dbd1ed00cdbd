//! Errors of `chunk-core`.

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
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
