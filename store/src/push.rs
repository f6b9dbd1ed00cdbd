//! Push: flatten, chunk, seal on all cores, upload what the store lacks,
//! and write the sealed manifest last.
//!
//! Four stages run at once with bounded queues between them, so memory
//! stays bounded whatever the image size: the flattener streams the ext4
//! image into a pipe (thread), [`chunk_core::Chunker`] cuts it into 512 KiB
//! chunks (thread), chunks are sealed in batches on all cores (thread +
//! rayon), and sealed chunks are uploaded with bounded concurrency (async).
//! The manifest is written only after every chunk it names is stored, so a
//! crash or cancellation never leaves a manifest that names a missing chunk.
//! A push holds a lease ([`crate::lease`]) from before its first chunk check
//! until its manifest is written, so gc never collects a chunk it relies on.
//!
//! With a profile-guided layout ([`Push::hot`]), the push also stores a
//! prefetch profile for the new manifest under `profiles/NAME`
//! ([`crate::profile::layout_prefetch_profile`]). A push without a layout
//! deletes `profiles/NAME`: it was bound to the manifest this push replaced.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use bytes::Bytes;
use cache_tiers::Tier;
use chunk_core::{
    ChunkRef, Chunker, CryptoProvider, DEFAULT_CHUNK_SIZE, OwnedChunk, OwnedChunkData, Salt,
    SealedChunk,
};
use flattener::{FlattenOptions, ImageRef, Platform};
use futures::StreamExt;
use kms_envelope::Kms;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{BoxError, Error, Result};
use crate::layout::{PROFILES, Store};
use crate::name::check_image_name;
use crate::versions::ManifestVersion;

/// The version of an image that a push replaced.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Replaced {
    /// Where the replaced version came from.
    pub source_ref: String,
    /// Its source digest (the image config's).
    pub source_digest: String,
    /// The same image (equal public manifest): nothing changed for readers.
    pub same_image: bool,
    /// Its copy under `retired/NAME/` (none when the image is the same).
    pub retired: Option<String>,
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PushSummary {
    /// Image name in the store.
    pub name: String,
    /// Where the image came from.
    pub source: String,
    /// Flattened image size in bytes.
    pub image_bytes: u64,
    /// SHA-256 of the flattened image (equals `lode flatten`'s).
    pub image_sha256: String,
    /// Chunk indexes in the image.
    pub chunks_total: u64,
    /// All-zero chunks (not stored).
    pub holes: u64,
    /// Distinct chunks this push uploaded.
    pub new: u64,
    /// Data chunks the store already had, or that repeat within this image.
    pub already_stored: u64,
    /// Ciphertext bytes uploaded.
    pub bytes_uploaded: u64,
    /// The version this push replaced, if the name existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<Replaced>,
    /// Stored chunks of the wrong size that this push replaced (counted in
    /// `new` too): `lode verify --delete-bad`'s job, done in passing.
    pub repaired: u64,
    /// Data chunks per uploaded chunk (higher is better; `None` when nothing was new).
    pub dedup_ratio: Option<f64>,
    /// Salt id the chunks were sealed with.
    pub salt_id: u32,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The hot region of a profile-guided layout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_region: Option<HotRegionSummary>,
    /// Chunks in the prefetch profile this push stored under
    /// `profiles/NAME` (profile-guided layouts only; `None`: none stored,
    /// and any older one was deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch_profile_chunks: Option<u64>,
}

/// Where a profile-guided layout put its hot copies.
#[derive(Debug, Clone, Serialize)]
pub struct HotRegionSummary {
    /// Byte offset of the hot region in the image.
    pub start: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// Profile entries that name nothing the image has (skipped).
    pub entries_skipped: usize,
}

/// Chunk counts so far, as reported to [`PushProgress::chunks`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChunkCounts {
    /// Chunks sealed (holes included).
    pub sealed: u64,
    /// Chunks uploaded.
    pub new: u64,
    /// Chunks the store already had (or repeated in this image).
    pub already_stored: u64,
    /// All-zero chunks.
    pub holes: u64,
}

/// Receives a push's progress; every method has a do-nothing default.
/// Called from the push's threads, so implementations must be cheap.
pub trait PushProgress: Send + Sync {
    /// Compressed layer bytes read so far, of the total.
    fn layers(&self, _read: u64, _total: u64) {}
    /// Chunk counts so far.
    fn chunks(&self, _counts: ChunkCounts) {}
    /// The pipeline is done (before the manifest is sealed and written).
    fn finished(&self) {}
}

/// A [`PushProgress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl PushProgress for NoProgress {}

/// Chunks per sealing batch: enough to keep every core busy.
const SEAL_BATCH: usize = 16;
/// Full chunks waiting to be sealed, and sealed chunks waiting to be stored.
const QUEUE_CHUNKS: usize = 32;

enum Sealed {
    Hole(u64),
    Data(u64, SealedChunk),
}

/// One push: build with [`Push::new`], adjust, then [`Push::run`].
pub struct Push<'a> {
    store: &'a Store,
    image: &'a str,
    name: &'a str,
    kms: Arc<dyn Kms>,
    key_id: &'a str,
    salt: Salt,
    platform: Option<Platform>,
    provider: &'static dyn CryptoProvider,
    upload_concurrency: usize,
    spool_dir: Option<PathBuf>,
    hot: Option<flattener::HotList>,
    registry: flattener::RegistryOptions,
    progress: Arc<dyn PushProgress>,
}

impl std::fmt::Debug for Push<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push")
            .field("store", &self.store.url())
            .field("image", &self.image)
            .field("name", &self.name)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl<'a> Push<'a> {
    /// A push of `image` (`oci:DIR[:TAG]` or `docker-archive:FILE`) as
    /// `name` into `store`, its manifest's data key wrapped under `key_id`
    /// by `kms`, chunks sealed with `salt` by `provider`. Defaults: 16
    /// uploads at once, the flattener's default spool directory, no
    /// platform check, no hot layout, no progress.
    pub fn new(
        store: &'a Store,
        image: &'a str,
        name: &'a str,
        kms: Arc<dyn Kms>,
        key_id: &'a str,
        salt: Salt,
        provider: &'static dyn CryptoProvider,
    ) -> Self {
        Self {
            store,
            image,
            name,
            kms,
            key_id,
            salt,
            platform: None,
            provider,
            upload_concurrency: 16,
            spool_dir: None,
            hot: None,
            registry: flattener::RegistryOptions::default(),
            progress: Arc::new(NoProgress),
        }
    }

    /// The platform the image must be built for, and what a multi-platform
    /// index is picked by (default: linux/amd64 from an index, a single
    /// image whatever its platform). `os/arch[/variant]`.
    pub fn platform(mut self, platform: Option<&str>) -> Result<Self> {
        self.platform = platform.map(parse_platform).transpose()?;
        Ok(self)
    }

    /// Concurrent chunk uploads (at least 1).
    pub fn upload_concurrency(mut self, n: usize) -> Self {
        self.upload_concurrency = n.max(1);
        self
    }

    /// Where the flattener spools file contents (about the image's size).
    pub fn spool_dir(mut self, dir: PathBuf) -> Self {
        self.spool_dir = Some(dir);
        self
    }

    /// Profile-guided layout: blocks to copy into a hot region
    /// (see [`crate::profile::hot_list_from_profile`]).
    pub fn hot(mut self, hot: Option<flattener::HotList>) -> Self {
        self.hot = hot;
        self
    }

    /// How a `docker://` image's registry is reached (TLS, credentials file).
    pub fn registry(mut self, registry: flattener::RegistryOptions) -> Self {
        self.registry = registry;
        self
    }

    /// Where progress goes.
    pub fn progress(mut self, progress: Arc<dyn PushProgress>) -> Self {
        self.progress = progress;
        self
    }

    /// Runs the push; see the module docs.
    pub async fn run(self) -> Result<PushSummary> {
        check_image_name(self.name)?;
        // Held from before the first chunk check until the manifest is written.
        let lease = crate::lease::push_lease(self.store).await?;
        let result = self.run_leased(&lease).await;
        lease.release().await;
        result
    }

    async fn run_leased(self, lease: &crate::lease::Lease) -> Result<PushSummary> {
        let started = Instant::now();
        // The version this push replaces: the name moves only if it still is.
        let prior = self.store.current_manifest(self.name).await?;
        let image_ref = ImageRef::parse(self.image).map_err(|e| Error::ImageRef {
            image: self.image.to_string(),
            source: e.into(),
        })?;
        let stage_err = |stage, e: std::io::Error| Error::Pipeline {
            stage,
            problem: e.to_string(),
        };

        // Stage 1: flatten into a pipe (its own thread; blocking I/O and CPU).
        let (pipe_rx, mut pipe_tx) = std::io::pipe().map_err(|e| stage_err("flatten", e))?;
        let flatten = {
            let progress = self.progress.clone();
            let spool_dir = self.spool_dir.clone();
            let hot = self.hot.clone();
            let platform = self.platform.clone();
            let registry = self.registry.clone();
            std::thread::Builder::new()
                .name("flatten".into())
                .spawn(move || {
                    let report =
                        move |p: flattener::Progress| progress.layers(p.bytes_read, p.bytes_total);
                    let mut opts = FlattenOptions::default()
                        .with_progress(&report)
                        .with_registry(registry);
                    if let Some(p) = platform {
                        opts = opts.with_platform(p);
                    }
                    opts.spool_dir = spool_dir;
                    if let Some(hot) = &hot {
                        opts = opts.with_hot(hot);
                    }
                    flattener::flatten_to_writer(&image_ref, &opts, &mut pipe_tx)
                })
                .map_err(|e| stage_err("flatten", e))?
        };

        // Stage 2: cut the stream into chunks (its own thread).
        let (chunk_tx, chunk_rx) = mpsc::sync_channel::<OwnedChunk>(QUEUE_CHUNKS);
        let chunker = std::thread::Builder::new()
            .name("chunk".into())
            .spawn(move || {
                for chunk in Chunker::default().reader(pipe_rx) {
                    if chunk_tx.send(chunk?).is_err() {
                        break; // the sealing stage stopped; its error is reported
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .map_err(|e| stage_err("chunk", e))?;

        // Stage 3: seal in batches on all cores (its own thread, rayon inside).
        let (sealed_tx, mut sealed_rx) = tokio::sync::mpsc::channel::<Sealed>(QUEUE_CHUNKS);
        let provider = self.provider;
        let salt = self.salt.clone();
        let sealer = std::thread::Builder::new()
            .name("seal".into())
            .spawn(move || seal_stage(&chunk_rx, &sealed_tx, provider, &salt))
            .map_err(|e| stage_err("seal", e))?;

        // Stage 4: upload what the store lacks, with bounded concurrency.
        let uploaded_bytes = Arc::new(AtomicU64::new(0));
        let repaired = Arc::new(AtomicU64::new(0));
        let mut refs: Vec<Option<ChunkRef>> = Vec::new();
        let mut seen = HashSet::new();
        let mut counts = ChunkCounts::default();
        let mut uploads = futures::stream::FuturesUnordered::new();
        let mut done = false;
        while !done || !uploads.is_empty() {
            tokio::select! {
                next = sealed_rx.recv(), if !done && uploads.len() < self.upload_concurrency => match next {
                    None => done = true,
                    Some(s) => {
                        counts.sealed += 1;
                        let (index, entry) = match s {
                            Sealed::Hole(i) => { counts.holes += 1; (i, None) }
                            Sealed::Data(i, chunk) => {
                                let r = chunk.chunk_ref();
                                if seen.insert(chunk.name) {
                                    let store = self.store;
                                    let counter = uploaded_bytes.clone();
                                    let repaired = repaired.clone();
                                    uploads.push(async move { upload(store, chunk, &counter, &repaired).await });
                                } else {
                                    counts.already_stored += 1;
                                }
                                (i, Some(r))
                            }
                        };
                        let i = usize::try_from(index).map_err(|_| Error::Pipeline {
                            stage: "chunk",
                            problem: format!("chunk index {index} does not fit in memory"),
                        })?;
                        if refs.len() <= i { refs.resize(i + 1, None); }
                        refs[i] = entry;
                        self.progress.chunks(counts);
                    }
                },
                Some(result) = uploads.next(), if !uploads.is_empty() => {
                    if result? { counts.new += 1 } else { counts.already_stored += 1 }
                    self.progress.chunks(counts);
                }
            }
        }
        let sealing = joined("seal", sealer.join())?;
        let chunking = joined("chunk", chunker.join())?;
        let flattened = joined("flatten", flatten.join())?;
        // The flattener's error first: the later stages only saw its end.
        let summary = flattened.map_err(|e| Error::Flatten {
            image: self.image.to_string(),
            source: e.into(),
        })?;
        chunking.map_err(|e| stage_err("chunk", e))?;
        sealing?;
        self.progress.finished();

        let expected = summary.size.div_ceil(DEFAULT_CHUNK_SIZE as u64);
        if refs.len() as u64 != expected {
            return Err(Error::Pipeline {
                stage: "chunk",
                problem: format!(
                    "{} chunks for an image of {} bytes",
                    refs.len(),
                    summary.size
                ),
            });
        }
        let manifest = manifest::Manifest {
            source_ref: self.image.to_string(),
            source_digest: summary.config_digest.to_string(),
            image_size: summary.size,
            chunk_size: DEFAULT_CHUNK_SIZE as u32,
            salt_id: self.salt.id(),
            tool_version: concat!("lode ", env!("CARGO_PKG_VERSION")).to_string(),
            chunks: refs,
        };
        let ctx = manifest::image_context(self.name);
        // Sealed with the keys: `Env` often holds secrets.
        let config = image_config(&summary);
        let sealed = manifest
            .seal_with_config(
                self.provider,
                self.kms.as_ref(),
                self.key_id,
                &ctx,
                Some(&config),
            )
            .await
            .map_err(|e| Error::SealManifest {
                name: self.name.to_string(),
                key_id: self.key_id.to_string(),
                source: e.into(),
            })?;
        // Last: only now is every named chunk stored. A replaced version is
        // kept first, so its chunks stay marked for workers still reading it.
        lease.check().await?;
        let (from_version, replaced) = match prior {
            None => (ManifestVersion::Absent, None),
            Some(cur) => {
                let same =
                    cur.sealed.public_digest(self.provider) == sealed.public_digest(self.provider);
                let retired = if same {
                    None
                } else {
                    Some(
                        self.store
                            .retire(self.name, &cur.sealed, self.provider)
                            .await?,
                    )
                };
                let replaced = Replaced {
                    source_ref: cur.sealed.source_ref().to_string(),
                    source_digest: cur.sealed.source_digest().to_string(),
                    same_image: same,
                    retired: retired.map(|r| r.object),
                };
                (cur.version, Some(replaced))
            }
        };
        self.store
            .put_manifest_if(self.name, &sealed, &from_version)
            .await?;

        // The old profiles/NAME was bound to the manifest just replaced:
        // replace it with the layout's profile, or delete it.
        let digest = hex::encode(sealed.public_digest(self.provider));
        let profile = summary.image.hot_region.as_ref().and_then(|h| {
            crate::profile::layout_prefetch_profile(
                self.name,
                &digest,
                h,
                summary.size,
                DEFAULT_CHUNK_SIZE as u32,
                &manifest.chunks,
            )
        });
        let prefetch_profile_chunks = match &profile {
            Some(p) => {
                self.store.put_profile(self.name, p).await?;
                Some(p.chunks.len() as u64)
            }
            None => {
                if let Err(e) = self.store.delete_under(PROFILES, self.name).await {
                    // Harmless: a mount refuses a profile of another manifest.
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "could not delete the stale profile"
                    );
                }
                None
            }
        };

        let data_chunks = expected - counts.holes;
        let hot_region = summary.image.hot_region.map(|h| HotRegionSummary {
            start: h.start,
            bytes: h.len,
            entries_skipped: h.entries_skipped,
        });
        Ok(PushSummary {
            name: self.name.to_string(),
            source: self.image.to_string(),
            image_bytes: summary.size,
            image_sha256: summary.sha256,
            chunks_total: expected,
            holes: counts.holes,
            new: counts.new,
            already_stored: counts.already_stored,
            bytes_uploaded: uploaded_bytes.load(Ordering::Relaxed),
            repaired: repaired.load(Ordering::Relaxed),
            replaced,
            dedup_ratio: (counts.new > 0).then(|| data_chunks as f64 / counts.new as f64),
            salt_id: self.salt.id(),
            seconds: started.elapsed().as_secs_f64(),
            hot_region,
            prefetch_profile_chunks,
        })
    }
}

/// The spool directory of a push: `dir` if given, else `$TMPDIR`, else
/// `/var/tmp` (on disk even where `/tmp` is a tmpfs, as on Debian 13, which
/// would hold a whole image's file contents in RAM). It must exist.
pub fn spool_dir(dir: Option<PathBuf>) -> Result<PathBuf> {
    let dir = dir
        .or_else(|| {
            std::env::var_os("TMPDIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| {
            let var_tmp = PathBuf::from("/var/tmp");
            if var_tmp.is_dir() {
                var_tmp
            } else {
                std::env::temp_dir()
            }
        });
    if !dir.is_dir() {
        return Err(Error::SpoolDir { path: dir });
    }
    Ok(dir)
}

/// The run config and platform of a flattened image, as the manifest
/// seals them.
fn image_config(summary: &flattener::FlattenSummary) -> manifest::ImageConfig {
    let r = &summary.run_config;
    let mut c = manifest::ImageConfig::default();
    c.entrypoint = r.entrypoint.clone();
    c.cmd = r.cmd.clone();
    c.env = r.env.clone();
    c.working_dir = r.working_dir.clone();
    c.user = r.user.clone();
    c.stop_signal = r.stop_signal.clone();
    c.labels = r.labels.clone();
    c.exposed_ports = r.exposed_ports.clone();
    if let Some(p) = &summary.platform {
        c.os = Some(p.os.clone());
        c.architecture = Some(p.architecture.clone());
        c.variant = p.variant.clone();
    }
    c
}

/// Parses `os/arch[/variant]`.
pub fn parse_platform(p: &str) -> Result<Platform> {
    Platform::parse(p).ok_or_else(|| Error::Platform {
        platform: p.to_string(),
    })
}

/// A stage thread's result, or an error when it panicked.
fn joined<T>(stage: &'static str, r: std::thread::Result<T>) -> Result<T> {
    r.map_err(|_| Error::Pipeline {
        stage,
        problem: "the thread panicked".into(),
    })
}

/// The sealing stage: batches of what is ready, sealed on all cores.
fn seal_stage(
    chunk_rx: &mpsc::Receiver<OwnedChunk>,
    sealed_tx: &tokio::sync::mpsc::Sender<Sealed>,
    provider: &'static dyn CryptoProvider,
    salt: &Salt,
) -> Result<()> {
    let mut batch = Vec::with_capacity(SEAL_BATCH);
    loop {
        batch.clear();
        match chunk_rx.recv() {
            Ok(c) => batch.push(c),
            Err(_) => return Ok(()),
        }
        while batch.len() < SEAL_BATCH {
            match chunk_rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let sealed: Vec<Sealed> = std::mem::take(&mut batch)
            .into_par_iter()
            .map(|c| match c.data {
                OwnedChunkData::Hole { .. } => Ok(Sealed::Hole(c.index)),
                OwnedChunkData::Data(plain) => {
                    chunk_core::seal_owned(provider, salt, plain).map(|s| Sealed::Data(c.index, s))
                }
            })
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Seal { source: e.into() })?;
        for s in sealed {
            if sealed_tx.blocking_send(s).is_err() {
                return Ok(()); // the upload stage failed; its error is reported
            }
        }
    }
}

/// Stores one chunk unless the store has it; true when it was uploaded.
/// A stored object of the wrong size is replaced (and counted in `repaired`).
async fn upload(
    store: &Store,
    chunk: SealedChunk,
    uploaded: &AtomicU64,
    repaired: &AtomicU64,
) -> Result<bool> {
    let key = chunk.name.to_hex();
    let err = |op, e: cache_tiers::Error| Error::Chunk {
        op,
        chunk: key.clone(),
        store: store.url().to_string(),
        source: BoxError::from(e),
    };
    let tier = store.chunks();
    let len = chunk.ciphertext.len() as u64;
    match tier.head(&key).await.map_err(|e| err("checking", e))? {
        Some(size) if size == len => return Ok(false),
        Some(size) => {
            // A torn or tampered object under the chunk's name: its name
            // promises these very bytes, so storing them again repairs it.
            tracing::warn!(
                chunk = %key,
                stored_bytes = size,
                expected_bytes = len,
                "a stored chunk has the wrong size; uploading it again"
            );
            tier.replace(&key, Bytes::from(chunk.ciphertext))
                .await
                .map_err(|e| err("replacing", e))?;
            repaired.fetch_add(1, Ordering::Relaxed);
        }
        None => {
            Tier::put(tier.as_ref(), &key, Bytes::from(chunk.ciphertext))
                .await
                .map_err(|e| err("storing", e))?;
        }
    }
    uploaded.fetch_add(len, Ordering::Relaxed);
    Ok(true)
}
