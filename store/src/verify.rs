//! Checking the stored chunks against the manifests that name them, and
//! healing what is bad.
//!
//! [`verify`] reads every chunk the chosen manifests name (each distinct
//! chunk once), checks that its length is the one the manifest implies (the
//! chunk's plaintext length plus the AEAD tag) and that its name is the
//! SHA-256 of its bytes, and reports each bad chunk with the images that use
//! it. With [`VerifyOptions::delete_bad`] it deletes the bad objects, so the
//! next push of any image holding those chunks uploads them again (a push
//! also replaces a stored chunk of the wrong size by itself, see
//! [`PushSummary::repaired`](crate::PushSummary::repaired)).
//!
//! No key is needed: names and lengths are public. The cost is one GET per
//! distinct chunk and reading all of its bytes: on S3, the whole store's
//! size in transfer and one request per chunk.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use cache_tiers::Tier;
use chunk_core::{CryptoProvider, TAG_LEN};
use futures::StreamExt;
use serde::Serialize;

use crate::error::{BoxError, Error, Result};
use crate::layout::Store;

/// What to verify.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// The images to check; `None`: every manifest in the store.
    pub images: Option<Vec<String>>,
    /// Delete bad chunk objects (wrong length or name) from the store.
    pub delete_bad: bool,
    /// Chunk reads in flight at once.
    pub concurrency: usize,
}

impl VerifyOptions {
    /// Checks every image of the store, deleting nothing, 16 reads at once.
    pub fn all() -> Self {
        Self {
            images: None,
            delete_bad: false,
            concurrency: 16,
        }
    }

    /// Checks only these images.
    pub fn images(names: Vec<String>) -> Self {
        Self {
            images: Some(names),
            ..Self::all()
        }
    }

    /// Deletes bad chunk objects (or not).
    pub fn delete_bad(mut self, yes: bool) -> Self {
        self.delete_bad = yes;
        self
    }

    /// Chunk reads in flight at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
}

/// What is wrong with a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChunkProblem {
    /// No object under the chunk's name.
    Missing,
    /// The object's length is not the sealed chunk's.
    WrongSize {
        /// Bytes stored.
        size: u64,
        /// Bytes the manifest implies.
        expected: u64,
    },
    /// The object's SHA-256 is not the chunk's name.
    WrongName {
        /// SHA-256 of the stored bytes, hex.
        sha256: String,
    },
}

impl std::fmt::Display for ChunkProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("missing"),
            Self::WrongSize { size, expected } => {
                write!(f, "{size} bytes stored, {expected} expected")
            }
            Self::WrongName { sha256 } => {
                write!(f, "its bytes hash to {sha256}, not to its name")
            }
        }
    }
}

/// A bad chunk and who uses it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BadChunk {
    /// The chunk's name (hex).
    pub chunk: String,
    /// What is wrong.
    #[serde(flatten)]
    pub problem: ChunkProblem,
    /// The images whose manifests name it, sorted.
    pub images: Vec<String>,
    /// Whether the object was deleted (`--delete-bad`; a missing one never is).
    pub deleted: bool,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The images checked, sorted.
    pub images: Vec<String>,
    /// Distinct chunks checked.
    pub chunks: u64,
    /// Bytes read from the store.
    pub bytes_read: u64,
    /// The bad chunks, sorted by name.
    pub bad: Vec<BadChunk>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl VerifyReport {
    /// Whether every chunk checked is good.
    pub fn is_clean(&self) -> bool {
        self.bad.is_empty()
    }
}

/// What the manifests say of one chunk.
struct Expected {
    len: u64,
    images: Vec<String>,
}

/// Reads and checks every chunk the chosen manifests name.
pub async fn verify(
    store: &Store,
    crypto: &dyn CryptoProvider,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let mut images = match &opts.images {
        Some(names) => names.clone(),
        None => store
            .list_manifests()
            .await?
            .into_iter()
            .map(|m| m.name)
            .collect(),
    };
    images.sort();
    images.dedup();

    // Distinct chunk name → expected length and the images naming it.
    let mut chunks: BTreeMap<String, Expected> = BTreeMap::new();
    for image in &images {
        let sealed = store.get_manifest(image).await?;
        let chunk_size = u64::from(sealed.chunk_size());
        for index in 0..sealed.chunk_count() {
            let Some(name) = sealed.name(index) else {
                continue;
            };
            let start = index as u64 * chunk_size;
            let plain = chunk_size.min(sealed.image_size().saturating_sub(start));
            let e = chunks.entry(name.to_hex()).or_insert_with(|| Expected {
                len: plain + TAG_LEN as u64,
                images: Vec::new(),
            });
            if e.images.last() != Some(image) {
                e.images.push(image.clone());
            }
        }
    }

    let tier = store.chunks();
    let checks = futures::stream::iter(chunks.iter())
        .map(|(name, expected)| async move {
            // Reads at most the expected length: a larger object is refused
            // by its size before its body is read.
            let bounded = tier.as_ref().clone().with_max_object_size(expected.len);
            let (problem, read) = match Tier::get(&bounded, name).await {
                Ok(None) => (Some(ChunkProblem::Missing), 0),
                Ok(Some(bytes)) => (
                    check(crypto, name, expected.len, &bytes),
                    bytes.len() as u64,
                ),
                Err(cache_tiers::Error::ValueTooLarge { size, .. }) => (
                    Some(ChunkProblem::WrongSize {
                        size: size as u64,
                        expected: expected.len,
                    }),
                    0,
                ),
                Err(e) => {
                    return Err(Error::Chunk {
                        op: "verifying",
                        chunk: name.clone(),
                        store: store.url().to_string(),
                        source: BoxError::from(e),
                    });
                }
            };
            Ok((name, expected, problem, read))
        })
        .buffer_unordered(opts.concurrency.max(1));
    futures::pin_mut!(checks);

    let mut bad = Vec::new();
    let mut bytes_read = 0;
    let mut checked = 0;
    while let Some(r) = checks.next().await {
        let (name, expected, problem, read) = r?;
        checked += 1;
        bytes_read += read;
        let Some(problem) = problem else {
            continue;
        };
        let mut deleted = false;
        if opts.delete_bad && problem != ChunkProblem::Missing {
            Tier::remove(tier.as_ref(), name)
                .await
                .map_err(|e| Error::Chunk {
                    op: "deleting",
                    chunk: name.clone(),
                    store: store.url().to_string(),
                    source: BoxError::from(e),
                })?;
            deleted = true;
        }
        tracing::warn!(chunk = %name, %problem, images = ?expected.images, deleted, "bad chunk");
        bad.push(BadChunk {
            chunk: name.clone(),
            problem,
            images: expected.images.clone(),
            deleted,
        });
    }
    bad.sort_by(|a, b| a.chunk.cmp(&b.chunk));
    Ok(VerifyReport {
        images,
        chunks: checked,
        bytes_read,
        bad,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Checks one chunk's bytes: its length, then its name.
fn check(crypto: &dyn CryptoProvider, name: &str, len: u64, bytes: &Bytes) -> Option<ChunkProblem> {
    if bytes.len() as u64 != len {
        return Some(ChunkProblem::WrongSize {
            size: bytes.len() as u64,
            expected: len,
        });
    }
    let sha256 = hex::encode(crypto.sha256(bytes));
    (sha256 != name).then_some(ChunkProblem::WrongName { sha256 })
}
