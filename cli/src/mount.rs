//! `lode mount`, `lode umount`, `lode pull`: the worker side.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use cache_tiers::{
    DiskTier, ErasureCodedTier, FillPolicy, MemcachedConfig, MemcachedNode, Node, Tiered,
};
use worker::{LazyImage, LazyImageOptions, TieredSource};

use crate::config::Settings;
use crate::store::Store;

/// Opens the image `name` lazily over L1 disk (when a cache dir is given),
/// optional L2 memcached, and the store.
pub async fn open_image(
    settings: &Settings,
    name: &str,
    cache_dir: Option<&Path>,
    readahead_chunks: u32,
) -> Result<LazyImage> {
    let store_url = settings.store.clone().unwrap_or_default();
    let store = Store::open(&settings.store()?, &store_url)?;
    let sealed = store.get_manifest(name).await?;
    let (kms, _) = crate::keys::open_kms(&settings.kms()?)?;
    let mut builder = Tiered::<String, Bytes>::builder();
    // The worker fills upper tiers itself, only with verified chunks.
    builder = builder.fill_policy(FillPolicy::None);
    let mut trusted = 0;
    if let Some(dir) = cache_dir {
        let disk = DiskTier::open(dir, settings.cache_size()?)
            .await
            .with_context(|| format!("opening the L1 cache in {}", dir.display()))?;
        builder = builder.tier(disk);
        trusted = 1;
    }
    if let Some(l2) = settings.l2()? {
        let nodes: Vec<Node> = l2
            .nodes
            .iter()
            .map(|addr| {
                Arc::new(MemcachedNode::new(addr.clone(), MemcachedConfig::default())) as Node
            })
            .collect();
        let tier = ErasureCodedTier::builder(nodes)
            .data_shards(l2.data)
            .parity_shards(l2.parity)
            .build()
            .context("configuring the L2 cache")?;
        builder = builder.tier(tier);
    }
    builder = builder.tier_arc(store.chunks.clone());
    let tiered = builder.build().context("building the cache tiers")?;
    let source = Arc::new(TieredSource::new(tiered, trusted));
    LazyImage::open(
        &sealed,
        kms.as_ref(),
        source,
        LazyImageOptions::default().readahead_chunks(readahead_chunks),
    )
    .await
    .with_context(|| format!("opening image {name} (does this KMS hold its key?)"))
}

/// Everything `lode mount` was asked.
pub struct MountRequest {
    /// Image name.
    pub name: String,
    /// Where ext4 (or with `file_only` the FUSE file) appears.
    pub mountpoint: PathBuf,
    /// L1 disk cache directory.
    pub cache_dir: Option<PathBuf>,
    /// Stats JSON written at unmount.
    pub stats: Option<PathBuf>,
    /// Stop after the FUSE file.
    pub file_only: bool,
    /// Stay in the foreground.
    pub foreground: bool,
    /// Daemon log file.
    pub log_file: Option<PathBuf>,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead_chunks: u32,
}

/// Mounts; as a daemon unless `foreground`, returning once the mount is ready.
pub fn mount(settings: &Settings, req: MountRequest) -> Result<()> {
    if !req.mountpoint.exists() {
        std::fs::create_dir_all(&req.mountpoint)
            .with_context(|| format!("creating mountpoint {}", req.mountpoint.display()))?;
    }
    let readiness = if req.foreground {
        None
    } else {
        // Fork before any thread exists.
        match worker::spawn_daemon(
            &worker::DaemonOptions::default().log_file(req.log_file.clone()),
        )? {
            worker::Daemon::Parent { .. } => {
                println!("mounted {} at {}", req.name, req.mountpoint.display());
                return Ok(());
            }
            worker::Daemon::Child(r) => Some(r),
            _ => anyhow::bail!("unexpected daemon state"),
        }
    };
    let result = (|| {
        let rt = crate::runtime()?;
        let image = rt.block_on(open_image(
            settings,
            &req.name,
            req.cache_dir.as_deref(),
            req.readahead_chunks,
        ))?;
        let opts = worker::MountOptions::default()
            .file_only(req.file_only)
            .stats_path(req.stats.clone())
            .source_name(format!("lode:{}", req.name));
        let handle = {
            let _guard = rt.enter();
            worker::mount(image, &req.mountpoint, &opts)
                .with_context(|| format!("mounting {} at {}", req.name, req.mountpoint.display()))?
        };
        anyhow::Ok((rt, handle))
    })();
    match (result, readiness) {
        (Ok((rt, handle)), Some(r)) => {
            r.ready()?;
            handle.wait()?;
            drop(rt);
            Ok(())
        }
        (Ok((rt, handle)), None) => {
            eprintln!(
                "mounted {} at {}; Ctrl-C or `lode umount` to end",
                req.name,
                req.mountpoint.display()
            );
            handle.wait()?;
            drop(rt);
            Ok(())
        }
        (Err(e), Some(r)) => {
            r.fail(&format!("{e:#}"));
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
}

/// Unmounts ext4, the loop device and FUSE, and ends the daemon.
pub fn umount(mountpoint: &Path) -> Result<()> {
    worker::unmount(mountpoint, Path::new(worker::DEFAULT_STATE_DIR))
        .with_context(|| format!("unmounting {}", mountpoint.display()))?;
    println!("unmounted {}", mountpoint.display());
    Ok(())
}

/// Materializes the whole image through the tiers.
pub async fn pull(
    settings: &Settings,
    name: &str,
    out: &Path,
    cache_dir: Option<&Path>,
) -> Result<()> {
    let image = open_image(settings, name, cache_dir, 0).await?;
    let tmp = out.with_extension("partial");
    let report = image
        .materialize(&tmp, 16)
        .await
        .with_context(|| format!("pulling {name}"))?;
    std::fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    println!(
        "{}: {} bytes, {} chunks, {} holes, {} bytes fetched in {} ms",
        out.display(),
        report.image_size,
        report.chunks_written,
        report.holes,
        report.bytes_fetched,
        report.elapsed_ms
    );
    Ok(())
}

/// Serves the image `name` over NBD until Ctrl-C or SIGTERM.
pub async fn serve_nbd(settings: &Settings, name: &str, listen: &str) -> Result<()> {
    use worker::nbd::{ListenAddr, NbdOptions, NbdServer};
    let addr: ListenAddr = listen
        .parse()
        .with_context(|| format!("listen address {listen:?}"))?;
    let image = open_image(settings, name, settings.cache_dir.as_deref(), 4).await?;
    let server = NbdServer::bind(&addr)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!("serving {name} read-only at {}", server.uri(name));
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    server
        .serve(image, NbdOptions::new(name), shutdown)
        .await
        .context("serving NBD")?;
    Ok(())
}
