//! Errors of the flattener.
//!
//! A variant's message says what failed and where (path, image, layer,
//! blob); the underlying error is returned from
//! [`source()`](std::error::Error::source), never repeated in the message.
//! Print the whole chain (e.g. `anyhow`'s `{:#}`) to see the cause.

use std::io;
use std::path::PathBuf;

/// A foreign error, boxed so this crate's API does not expose other crates' types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while flattening an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The image reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file of the image source or the output could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The image's index, manifest or config is missing something or is malformed.
    #[error("{source_name}: {reason}")]
    Image {
        /// The image source (`oci:DIR:TAG`, `docker-archive:FILE`).
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// A JSON document (index, manifest, config) does not parse.
    #[error("{source_name}: malformed {what}")]
    Json {
        /// The image source.
        source_name: String,
        /// Which document.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A blob's bytes do not hash to its digest (or have the wrong size).
    #[error("blob {blob}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The blob (digest or path in the archive).
        blob: String,
        /// The digest (or size) the descriptor promised.
        expected: String,
        /// The digest (or size) of the bytes read.
        actual: String,
    },
    /// A layer's uncompressed bytes do not hash to the config's `rootfs.diff_ids` entry.
    #[error(
        "layer {index} (blob {blob}): uncompressed digest {actual} does not match diff_id {expected}"
    )]
    DiffIdMismatch {
        /// Layer index, 0 = bottom.
        index: usize,
        /// The blob.
        blob: String,
        /// The diff_id from the config.
        expected: String,
        /// The digest of the bytes read.
        actual: String,
    },
    /// A layer could not be decompressed, parsed or applied.
    #[error("layer {index} (blob {blob})")]
    Layer {
        /// Layer index, 0 = bottom.
        index: usize,
        /// The blob.
        blob: String,
        /// What went wrong.
        #[source]
        source: LayerError,
    },
    /// The image has more layers than this process may open files: every
    /// layer is spooled to a temporary file that stays open until the image
    /// is written.
    #[error(
        "the image has {layers} layers and flattening keeps one spool file open per layer, \
         but this process may open only {limit} files: raise the limit (ulimit -n)"
    )]
    TooManyLayers {
        /// Layers of the image.
        layers: usize,
        /// The soft `RLIMIT_NOFILE` of the process.
        limit: u64,
    },
    /// The ext4 writer failed.
    #[error("writing the ext4 image")]
    Write(#[source] crate::ext4::WriteError),
    /// A registry request failed (after retries), or the registry has no
    /// such repository, tag or digest.
    #[error("{reference}: {what}")]
    Registry {
        /// The image (`docker://...`).
        reference: String,
        /// What was asked for.
        what: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// A worker thread panicked (a bug; reported instead of crashing).
    #[error("internal error: {0}")]
    Internal(String),
}

/// What went wrong inside one layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// The compressed stream is corrupt.
    #[error("corrupt {codec} stream")]
    Decompress {
        /// `gzip` or `zstd`.
        codec: &'static str,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },
    /// The media type and the first bytes disagree, or the type is unknown.
    #[error("{0}")]
    Format(String),
    /// The tar stream ends inside an entry.
    #[error("truncated tar: stream ends inside the entry at offset {offset}")]
    Truncated {
        /// Offset of the entry's header in the uncompressed stream.
        offset: u64,
    },
    /// The tar stream is malformed.
    #[error("malformed tar at offset {offset}: {reason}")]
    Malformed {
        /// Offset of the header in the uncompressed stream.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An entry cannot be applied (the path is shown with invalid UTF-8 replaced).
    #[error("entry {path:?}: {reason}")]
    Entry {
        /// The entry's path as in the archive.
        path: String,
        /// Why it cannot be applied.
        reason: String,
    },
    /// The blob is not in the image source (its file does not exist).
    #[error("blob missing: {} does not exist", path.display())]
    BlobMissing {
        /// Where the blob should be.
        path: PathBuf,
    },
    /// The blob ends before the size its descriptor gives.
    #[error("blob truncated: {actual} of {expected} bytes")]
    BlobTruncated {
        /// The size the descriptor promised.
        expected: u64,
        /// The bytes there are.
        actual: u64,
    },
    /// Reading the blob or writing the spool failed.
    #[error("reading the blob or writing the spool")]
    Io(#[source] io::Error),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext4::WriteError;

    /// Every variant that has a source: its message does not end with
    /// (repeat) the source's message, at any depth.
    #[test]
    fn messages_do_not_repeat_their_sources() {
        let io = || io::Error::other("disk on fire");
        let json = serde_json::from_slice::<u8>(b"{").unwrap_err();
        let layer = |source| Error::Layer {
            index: 1,
            blob: "sha256:ab".into(),
            source,
        };
        let all = [
            Error::Io {
                path: "/x".into(),
                source: io(),
            },
            Error::Json {
                source_name: "oci:/x".into(),
                what: "index.json".into(),
                source: json,
            },
            layer(LayerError::Decompress {
                codec: "gzip",
                source: io(),
            }),
            layer(LayerError::Io(io())),
            Error::Write(WriteError::Spool {
                layer: 0,
                offset: 0,
                len: 1,
                node: None,
                source: io(),
            }),
            Error::Write(WriteError::Write {
                offset: 4096,
                source: io(),
            }),
            Error::Registry {
                reference: "docker://h/r:t".into(),
                what: "fetching manifest h/r:t".into(),
                source: Box::new(io()),
            },
        ];
        for e in &all {
            let mut cur: &dyn std::error::Error = e;
            let mut depth = 1;
            while let Some(src) = cur.source() {
                let (outer, inner) = (cur.to_string(), src.to_string());
                assert!(!outer.ends_with(&inner), "{outer:?} repeats {inner:?}");
                assert!(!outer.is_empty());
                cur = src;
                depth += 1;
            }
            assert!(depth >= 2, "{e:?} lost its source");
        }
    }
}
