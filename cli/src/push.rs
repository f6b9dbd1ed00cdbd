//! `lode push`: flatten, chunk, seal on all cores, upload what the store
//! lacks, and write the sealed manifest last.
//!
//! Three stages run at once with bounded queues between them, so memory
//! stays bounded whatever the image size: the flattener streams the ext4
//! image into 512 KiB chunks (thread), chunks are sealed in batches on all
//! cores (thread + rayon), and sealed chunks are uploaded with bounded
//! concurrency (async). The manifest is written only after every chunk it
//! names is stored, so a crash or Ctrl-C never leaves a manifest that names
//! a missing chunk.
//!
//! With a profile-guided layout (`--layout-profile`), the push also stores a
//! prefetch profile for the new manifest under `profiles/NAME`
//! ([`layout_prefetch_profile`]): the hot region's chunks in order, then the
//! metadata chunks after it, with the kernel readahead hint 0, so `lode
//! mount` prefetches the start and keeps kernel readahead off the cold
//! copies without being told. A push without a layout deletes `profiles/NAME`:
//! it was bound to the manifest this push replaced.

use std::collections::HashSet;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use cache_tiers::Tier;
use chunk_core::{ChunkRef, CryptoProvider, DEFAULT_CHUNK_SIZE, Salt, SealedChunk};
use flattener::{FlattenOptions, ImageRef, Platform};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use kms_envelope::Kms;
use rayon::prelude::*;
use serde::Serialize;

use crate::store::{Store, check_image_name};

/// What a push did, printed at the end (`--json` for scripts).
#[derive(Debug, Clone, Serialize)]
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
    /// Data chunks per uploaded chunk (higher is better; `null` when nothing was new).
    pub dedup_ratio: Option<f64>,
    /// Salt id the chunks were sealed with.
    pub salt_id: u32,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The hot region of a profile-guided layout (`--layout-profile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_region: Option<HotRegionSummary>,
    /// Chunks in the prefetch profile this push stored under
    /// `profiles/NAME` (`--layout-profile` only; `None`: none stored, and
    /// any older one was deleted).
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

impl HotRegionSummary {
    fn of(summary: &flattener::FlattenSummary) -> Option<Self> {
        summary.image.hot_region.map(|h| Self {
            start: h.start,
            bytes: h.len,
            entries_skipped: h.entries_skipped,
        })
    }
}

/// Reads a profile written by `lode mount --record-profile` and turns its
/// file part (which blocks of which paths a start read, in order) into the
/// flattener's hot list. Paths, not offsets, so a profile recorded on one
/// version of an image applies to the next one too.
pub fn hot_list_from_profile(path: &std::path::Path) -> Result<flattener::HotList> {
    let profile = worker::profile::Profile::load(path)
        .with_context(|| format!("layout profile {}", path.display()))?;
    let entries: Vec<flattener::HotEntry> = profile
        .files_as_ranges()
        .into_iter()
        .map(|(path, blocks)| flattener::HotEntry { path, blocks })
        .collect();
    ensure!(
        !entries.is_empty(),
        "layout profile {} names no files (was it recorded with --file-only, or did nothing read the mount?)",
        path.display()
    );
    Ok(flattener::HotList { entries })
}

/// The prefetch profile a profile-guided push stores for its image: the
/// chunks of the hot region in order, then the chunks after it up to the end
/// of the image (directories, extent trees, inode tables and other metadata
/// the flattener writes there), holes skipped, all at 0 ms, with the kernel
/// readahead hint 0. `None` when the layout placed nothing (the image is the
/// plain one and needs no profile).
pub fn layout_prefetch_profile(
    name: &str,
    manifest_digest: &str,
    hot: &flattener::HotRegion,
    image_size: u64,
    chunk_size: u32,
    chunks: &[Option<ChunkRef>],
) -> Option<worker::profile::Profile> {
    if hot.len == 0 || chunk_size == 0 {
        return None;
    }
    let cs = u64::from(chunk_size);
    let first = hot.start / cs;
    let listed: Vec<worker::ChunkAccess> = (first..image_size.div_ceil(cs))
        .filter(|&i| {
            usize::try_from(i)
                .ok()
                .and_then(|i| chunks.get(i))
                .is_some_and(Option::is_some)
        })
        .map(|index| worker::ChunkAccess { index, at_ms: 0 })
        .collect();
    Some(worker::profile::Profile {
        version: worker::profile::PROFILE_VERSION,
        image: name.to_owned(),
        manifest_digest: manifest_digest.to_owned(),
        chunk_size,
        image_size,
        window_ms: 0,
        chunks: listed,
        files: Vec::new(),
        unmapped_blocks: 0,
        kernel_readahead_kb: Some(0),
    })
}

/// Everything `push` needs.
pub struct PushRequest<'a> {
    /// The image to push.
    pub image: &'a str,
    /// Its name in the store.
    pub name: &'a str,
    /// Platform for multi-platform indexes.
    pub platform: Option<&'a str>,
    /// Where chunks and the manifest go.
    pub store: &'a Store,
    /// Wraps the manifest's data key.
    pub kms: Arc<dyn Kms>,
    /// Master key id.
    pub key_id: &'a str,
    /// The pusher's salt.
    pub salt: Salt,
    /// Crypto backend.
    pub provider: &'static dyn CryptoProvider,
    /// Concurrent uploads.
    pub upload_concurrency: usize,
    /// Directory for the flattener's spool.
    pub spool_dir: Option<std::path::PathBuf>,
    /// Show progress bars (on a terminal).
    pub progress: bool,
    /// Profile-guided layout: blocks to copy into a hot region
    /// (`--layout-profile`, see [`hot_list_from_profile`]).
    pub hot: Option<flattener::HotList>,
}

/// Chunks per sealing batch: enough to keep every core busy.
const SEAL_BATCH: usize = 16;
/// Full chunks waiting to be sealed, and sealed chunks waiting to be stored.
const QUEUE_CHUNKS: usize = 32;

enum Sealed {
    Hole(u64),
    Data(u64, SealedChunk),
}

/// Receives the streamed image and hands out full chunks.
struct ChunkSink {
    buf: Vec<u8>,
    index: u64,
    tx: mpsc::SyncSender<(u64, Vec<u8>)>,
}

impl ChunkSink {
    fn send_current(&mut self) -> io::Result<()> {
        let full = std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(DEFAULT_CHUNK_SIZE + chunk_core::TAG_LEN),
        );
        self.tx
            .send((self.index, full))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the sealing stage stopped"))?;
        self.index += 1;
        Ok(())
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = DEFAULT_CHUNK_SIZE - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == DEFAULT_CHUNK_SIZE {
            self.send_current()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A progress bar on a terminal, hidden otherwise.
pub fn bar(show: bool, template: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// The `--platform` flag: the image must be built for it, and it is what a
/// multi-platform index is picked by (without the flag: linux/amd64 from an
/// index, a single image whatever its platform).
pub fn flatten_options<'a>(platform: Option<&str>) -> Result<FlattenOptions<'a>> {
    let opts = FlattenOptions::default();
    Ok(match platform {
        Some(p) => opts.with_platform(
            Platform::parse(p)
                .with_context(|| format!("platform {p:?} must look like linux/amd64"))?,
        ),
        None => opts,
    })
}

/// The spool directory of a push: `dir` if given, else `$TMPDIR`, else
/// `/var/tmp` (on disk even where `/tmp` is a tmpfs, as on Debian 13, which
/// would hold a whole image's file contents in RAM). It must exist.
pub fn spool_dir(dir: Option<std::path::PathBuf>) -> Result<std::path::PathBuf> {
    let dir = dir
        .or_else(|| {
            std::env::var_os("TMPDIR")
                .filter(|v| !v.is_empty())
                .map(std::path::PathBuf::from)
        })
        .unwrap_or_else(|| {
            let var_tmp = std::path::PathBuf::from("/var/tmp");
            if var_tmp.is_dir() {
                var_tmp
            } else {
                std::env::temp_dir()
            }
        });
    anyhow::ensure!(
        dir.is_dir(),
        "spool directory {} does not exist (--spool-dir, LODE_SPOOL_DIR or TMPDIR)",
        dir.display()
    );
    Ok(dir)
}

/// Pushes one image; see the module docs.
pub async fn push(req: PushRequest<'_>) -> Result<PushSummary> {
    check_image_name(req.name)?;
    // Held from before the first chunk check until the manifest is written,
    // so `lode gc --delete` cannot collect a chunk this push relies on (gc.rs).
    let lease = crate::gc::push_lease(req.store).await?;
    let result = push_leased(req, &lease).await;
    lease.release().await;
    result
}

async fn push_leased(req: PushRequest<'_>, lease: &crate::gc::Lease) -> Result<PushSummary> {
    let started = Instant::now();
    let image_ref = ImageRef::parse(req.image).with_context(|| format!("image {:?}", req.image))?;
    let base_opts = flatten_options(req.platform)?;

    let read_bar = bar(
        req.progress,
        "{prefix:>9} [{bar:30}] {bytes}/{total_bytes} {msg}",
    );
    read_bar.set_prefix("layers");
    let store_bar = bar(req.progress, "{prefix:>9} {pos} chunks sealed, {msg}");
    store_bar.set_prefix("chunks");

    // Stage 1: flatten into chunks (its own thread; blocking I/O and CPU).
    let (chunk_tx, chunk_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(QUEUE_CHUNKS);
    let flatten_bar = read_bar.clone();
    let spool_dir = req.spool_dir.clone();
    let hot = req.hot.clone();
    let flatten = std::thread::Builder::new()
        .name("flatten".into())
        .spawn(move || {
            let progress = move |p: flattener::Progress| {
                flatten_bar.set_length(p.bytes_total);
                flatten_bar.set_position(p.bytes_read);
            };
            let mut opts = base_opts.with_progress(&progress);
            opts.spool_dir = spool_dir;
            if let Some(hot) = &hot {
                opts = opts.with_hot(hot);
            }
            let mut sink = ChunkSink {
                buf: Vec::with_capacity(DEFAULT_CHUNK_SIZE + 16),
                index: 0,
                tx: chunk_tx,
            };
            let summary = flattener::flatten_to_writer(&image_ref, &opts, &mut sink)?;
            if !sink.buf.is_empty() {
                sink.send_current().map_err(|e| anyhow!(e))?;
            }
            anyhow::Ok(summary)
        })?;

    // Stage 2: seal in batches on all cores (its own thread, rayon inside).
    let (sealed_tx, mut sealed_rx) = tokio::sync::mpsc::channel::<Sealed>(QUEUE_CHUNKS);
    let provider = req.provider;
    let salt = req.salt.clone();
    let sealer = std::thread::Builder::new()
        .name("seal".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(SEAL_BATCH);
            loop {
                batch.clear();
                match chunk_rx.recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => return anyhow::Ok(()),
                }
                while batch.len() < SEAL_BATCH {
                    match chunk_rx.try_recv() {
                        Ok(c) => batch.push(c),
                        Err(_) => break,
                    }
                }
                let sealed: Vec<Sealed> = std::mem::take(&mut batch)
                    .into_par_iter()
                    .map(|(index, plain)| {
                        if chunk_core::is_all_zero(&plain) {
                            Ok(Sealed::Hole(index))
                        } else {
                            chunk_core::seal_owned(provider, &salt, plain)
                                .map(|s| Sealed::Data(index, s))
                        }
                    })
                    .collect::<Result<_, _>>()
                    .context("sealing chunks")?;
                for s in sealed {
                    if sealed_tx.blocking_send(s).is_err() {
                        return Ok(()); // the upload stage failed; its error is reported
                    }
                }
            }
        })?;

    // Stage 3: upload what the store lacks, with bounded concurrency.
    let uploaded_bytes = Arc::new(AtomicU64::new(0));
    let mut refs: Vec<Option<ChunkRef>> = Vec::new();
    let mut seen = HashSet::new();
    let (mut holes, mut new, mut already) = (0u64, 0u64, 0u64);
    let mut uploads = futures::stream::FuturesUnordered::new();
    let mut sealed_count = 0u64;
    let mut done = false;
    while !done || !uploads.is_empty() {
        tokio::select! {
            next = sealed_rx.recv(), if !done && uploads.len() < req.upload_concurrency => match next {
                None => done = true,
                Some(s) => {
                    sealed_count += 1;
                    store_bar.set_position(sealed_count);
                    let (index, entry) = match s {
                        Sealed::Hole(i) => { holes += 1; (i, None) }
                        Sealed::Data(i, chunk) => {
                            let r = chunk.chunk_ref();
                            if seen.insert(chunk.name) {
                                let tier = req.store.chunks.clone();
                                let counter = uploaded_bytes.clone();
                                uploads.push(async move { upload(&tier, chunk, &counter).await });
                            } else {
                                already += 1;
                            }
                            (i, Some(r))
                        }
                    };
                    let i = usize::try_from(index).context("chunk index")?;
                    if refs.len() <= i { refs.resize(i + 1, None); }
                    refs[i] = entry;
                }
            },
            Some(result) = uploads.next(), if !uploads.is_empty() => {
                if result? { new += 1 } else { already += 1 }
                store_bar.set_message(format!("{new} new, {already} already stored, {holes} holes"));
            }
        }
    }
    let sealing = sealer
        .join()
        .map_err(|_| anyhow!("the sealing thread panicked"))?;
    let flattened = flatten
        .join()
        .map_err(|_| anyhow!("the flatten thread panicked"))?;
    let summary = flattened.with_context(|| format!("flattening {}", req.image))?;
    sealing?;
    read_bar.finish_and_clear();
    store_bar.finish_and_clear();

    let expected = summary.size.div_ceil(DEFAULT_CHUNK_SIZE as u64);
    if refs.len() as u64 != expected {
        bail!(
            "internal error: {} chunks for an image of {} bytes",
            refs.len(),
            summary.size
        );
    }
    let manifest = manifest::Manifest {
        source_ref: req.image.to_string(),
        source_digest: summary.config_digest.to_string(),
        image_size: summary.size,
        chunk_size: DEFAULT_CHUNK_SIZE as u32,
        salt_id: req.salt.id(),
        tool_version: concat!("lode ", env!("CARGO_PKG_VERSION")).to_string(),
        chunks: refs,
    };
    let ctx = manifest::image_context(req.name);
    let sealed = manifest
        .seal(req.kms.as_ref(), req.key_id, &ctx)
        .await
        .with_context(|| {
            format!(
                "sealing the manifest of {} with KMS key {}",
                req.name, req.key_id
            )
        })?;
    // Last: only now is every named chunk stored.
    lease.check().await?;
    req.store.put_manifest(req.name, &sealed).await?;

    // The old profiles/NAME was bound to the manifest just replaced: replace
    // it with the layout's profile, or delete it.
    let digest = hex::encode(sealed.public_digest());
    let profile = summary.image.hot_region.as_ref().and_then(|h| {
        layout_prefetch_profile(
            req.name,
            &digest,
            h,
            summary.size,
            DEFAULT_CHUNK_SIZE as u32,
            &manifest.chunks,
        )
    });
    let prefetch_profile_chunks = match &profile {
        Some(p) => {
            req.store.put_profile(req.name, p).await.with_context(|| {
                format!(
                    "{} is pushed, but its prefetch profile is not stored: \
                     mount it with --kernel-readahead-kb 0",
                    req.name
                )
            })?;
            Some(p.chunks.len() as u64)
        }
        None => {
            if let Err(e) = req
                .store
                .delete_under(crate::store::PROFILES, req.name)
                .await
            {
                // Harmless: a mount refuses a profile of another manifest.
                tracing::warn!(error = %crate::error_chain(&e), "could not delete the stale profile");
            }
            None
        }
    };

    let data_chunks = expected - holes;
    let hot_region = HotRegionSummary::of(&summary);
    Ok(PushSummary {
        name: req.name.to_string(),
        source: req.image.to_string(),
        image_bytes: summary.size,
        image_sha256: summary.sha256,
        chunks_total: expected,
        holes,
        new,
        already_stored: already,
        bytes_uploaded: uploaded_bytes.load(Ordering::Relaxed),
        dedup_ratio: (new > 0).then(|| data_chunks as f64 / new as f64),
        salt_id: req.salt.id(),
        seconds: started.elapsed().as_secs_f64(),
        hot_region,
        prefetch_profile_chunks,
    })
}

/// Stores one chunk unless the store has it; true when it was uploaded.
async fn upload(
    tier: &cache_tiers::ObjectStoreTier,
    chunk: SealedChunk,
    uploaded: &AtomicU64,
) -> Result<bool> {
    let key = chunk.name.to_hex();
    if tier
        .exists(&key)
        .await
        .with_context(|| format!("checking chunk {key} in the store"))?
    {
        return Ok(false);
    }
    let len = chunk.ciphertext.len() as u64;
    Tier::put(tier, &key, Bytes::from(chunk.ciphertext))
        .await
        .with_context(|| format!("storing chunk {key}"))?;
    uploaded.fetch_add(len, Ordering::Relaxed);
    Ok(true)
}

/// Human-readable summary lines.
pub fn print_summary(s: &PushSummary) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("pushed {} as {} in {:.1} s", s.source, s.name, s.seconds);
    println!(
        "  image     {:.1} MiB, sha256 {}",
        mib(s.image_bytes),
        s.image_sha256
    );
    println!(
        "  chunks    {} total: {} holes, {} new, {} already stored",
        s.chunks_total, s.holes, s.new, s.already_stored
    );
    match s.dedup_ratio {
        Some(r) => println!(
            "  uploaded  {:.1} MiB (dedup ratio {r:.2})",
            mib(s.bytes_uploaded)
        ),
        None => println!("  uploaded  nothing: every chunk was already stored"),
    }
    if let Some(h) = &s.hot_region {
        println!(
            "  hot       {:.1} MiB of profile-guided copies at offset {} ({} profile entries not in this image)",
            mib(h.bytes),
            h.start,
            h.entries_skipped
        );
    }
    if let Some(n) = s.prefetch_profile_chunks {
        println!(
            "  profile   {n} chunks stored as profiles/{}, kernel readahead 0 (lode mount applies both)",
            s.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u8) -> Option<ChunkRef> {
        Some(ChunkRef {
            name: chunk_core::ChunkName::from_bytes([i; 32]),
            key: chunk_core::ChunkKey::from_bytes([i; 32]),
        })
    }

    #[test]
    fn layout_profile_lists_hot_then_metadata_chunks_without_holes() {
        let cs = 1024u32;
        // Chunks 0-1 layers, 2-4 hot (3 a hole), 5-6 metadata (6 a hole), 7 metadata.
        let chunks = vec![
            chunk(0),
            chunk(1),
            chunk(2),
            None,
            chunk(4),
            chunk(5),
            None,
            chunk(7),
        ];
        let mut hot = flattener::HotRegion::default();
        hot.start = 2 * 1024;
        hot.len = 2 * 1024 + 100;
        let p = layout_prefetch_profile("app", &"ab".repeat(32), &hot, 8 * 1024 - 10, cs, &chunks)
            .unwrap();
        assert_eq!(p.chunk_indexes(), vec![2, 4, 5, 7]);
        assert!(p.chunks.iter().all(|c| c.at_ms == 0));
        assert_eq!(p.kernel_readahead_kb, Some(0));
        assert_eq!(p.image, "app");
        p.validate().unwrap();
        assert!(p.check_image(&"ab".repeat(32), 8 * 1024 - 10, cs).is_ok());

        // Nothing placed: no profile.
        hot.len = 0;
        assert!(
            layout_prefetch_profile("app", &"ab".repeat(32), &hot, 8192, cs, &chunks).is_none()
        );
    }
}
