//! `lode mount`, `lode umount`, `lode pull`: the worker side.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lode_store::layout::PROFILES;
use lode_store::{
    Opened, Prefetch, PrefetchStart, ReadaheadSource, kernel_readahead, open_image, open_kms,
    start_prefetch,
};
use worker::LazyImageOptions;

use crate::config::{Settings, parse_duration};

/// Opens `name` from the configured store, key service and tiers.
async fn open(
    settings: &Settings,
    name: &str,
    cache_dir: Option<&Path>,
    opts: LazyImageOptions,
) -> Result<Opened> {
    let store = settings.store()?;
    let kms = open_kms(&settings.kms()?, opts.crypto)?;
    let tiers = settings.tiers(cache_dir)?;
    Ok(open_image(&store, name, kms.as_ref(), &tiers, opts).await?)
}

/// Everything `lode mount` was asked.
#[derive(clap::Args)]
pub struct MountArgs {
    /// Image name in the store
    pub name: String,
    /// Where the image's filesystem appears (created if missing)
    pub mountpoint: PathBuf,
    /// Stop after the FUSE file (MOUNTPOINT/image), no loop or ext4 mount
    #[arg(long)]
    pub file_only: bool,
    /// Stay in the foreground instead of returning once mounted
    #[arg(long)]
    pub foreground: bool,
    /// Write the worker's counters as JSON here at unmount
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// Daemon log file (default: discarded)
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Chunks fetched ahead of a sequential reader (0: only what is read)
    #[arg(long, default_value_t = 4)]
    pub readahead_chunks: u32,
    /// Kernel readahead of the loop device in KiB. Default: the hint of the
    /// image's stored profile (0 for images pushed with --layout-profile,
    /// whose readahead would run in file order into cold chunks), else 128
    #[arg(long, value_name = "KIB", env = "LODE_KERNEL_READAHEAD_KB")]
    pub kernel_readahead_kb: Option<u32>,
    /// Record a prefetch profile and write it to FILE (JSON) when the mount
    /// ends: the chunks read in the first seconds and the files they belong to
    #[arg(long, value_name = "FILE")]
    pub record_profile: Option<PathBuf>,
    /// How long after mounting the profile records (e.g. 60s, 2m, 500ms)
    #[arg(long, default_value = "60s", requires = "record_profile")]
    pub profile_window: String,
    /// Fail readers (EIO) instead of letting them hang when this daemon
    /// leaves a request unanswered this long (e.g. 60s, 5m; 0: never).
    /// The kernel then ends the whole mount: `lode umount` and mount
    /// again. Linux >= 6.14; it checks every 15 s (a shorter value acts
    /// as 15 s)
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub request_timeout: String,
    #[command(flatten)]
    pub prefetch: PrefetchArgs,
}

/// Prefetch of the stored profile at mount.
#[derive(clap::Args)]
pub struct PrefetchArgs {
    /// Chunks the prefetch of a stored profile fetches at once
    #[arg(long, default_value_t = 16)]
    pub prefetch_concurrency: usize,
    /// Do not prefetch the image's stored profile (profiles/NAME)
    #[arg(long)]
    pub no_prefetch: bool,
}

impl PrefetchArgs {
    pub fn settings(&self) -> lode_store::Prefetch {
        lode_store::Prefetch::new(!self.no_prefetch, self.prefetch_concurrency)
    }
}

/// Mounts; as a daemon unless `foreground`, returning once the mount is ready.
pub fn mount(
    settings: &Settings,
    req: MountArgs,
    crypto: &'static dyn chunk_core::CryptoProvider,
) -> Result<()> {
    let profile_window = parse_duration(&req.profile_window).context("--profile-window")?;
    let request_timeout = worker::kernel_request_timeout(
        parse_duration(&req.request_timeout).context("--request-timeout")?,
    )
    .context("--request-timeout")?;
    let prefetch = req.prefetch.settings();
    if !req.mountpoint.exists() {
        std::fs::create_dir_all(&req.mountpoint)
            .with_context(|| format!("creating mountpoint {}", req.mountpoint.display()))?;
    }
    let readiness = if req.foreground {
        // The process will hold the image's keys: no core dumps, no ptrace.
        worker::make_undumpable()?;
        None
    } else {
        // SAFETY: no thread exists yet: `main` has only parsed flags, set up
        // logging and the open-file limit; the runtime is built below, in
        // the daemon. (spawn_daemon makes the daemon undumpable.)
        match unsafe {
            worker::spawn_daemon(&worker::DaemonOptions::default().log_file(req.log_file.clone()))
        }? {
            worker::Daemon::Parent { .. } => {
                println!("mounted {} at {}", req.name, req.mountpoint.display());
                return Ok(());
            }
            worker::Daemon::Child(r) => Some(r),
            _ => anyhow::bail!("unexpected daemon state"),
        }
    };
    let result = (|| {
        let rt = crate::rt::runtime()?;
        let mut image_opts = LazyImageOptions::default()
            .readahead_chunks(req.readahead_chunks)
            .crypto(crypto);
        if req.record_profile.is_some() {
            image_opts = image_opts.record(profile_window);
        }
        let opened = rt.block_on(open(
            settings,
            &req.name,
            settings.cache_dir.as_deref(),
            image_opts,
        ))?;
        // Before mounting: the kernel's first reads join the prefetch.
        let hint = report_prefetch(
            &req.name,
            rt.block_on(start_prefetch(&opened, &req.name, prefetch)),
        );
        let (readahead_kb, why) = kernel_readahead(req.kernel_readahead_kb, hint);
        match why {
            ReadaheadSource::Flag => tracing::info!(
                kernel_readahead_kb = readahead_kb,
                "kernel readahead from --kernel-readahead-kb or LODE_KERNEL_READAHEAD_KB"
            ),
            ReadaheadSource::Profile => tracing::info!(
                kernel_readahead_kb = readahead_kb,
                "kernel readahead from {PROFILES}/{} (the image asks for it)",
                req.name
            ),
            // Nothing was chosen: not worth a line unless asked (-v).
            ReadaheadSource::Default => tracing::debug!(
                kernel_readahead_kb = readahead_kb,
                "kernel readahead: the default (no flag, no hint in a stored profile)"
            ),
        }
        let target = req.record_profile.as_ref().map(|path| {
            if req.file_only {
                eprintln!(
                    "lode: --file-only: no ext4 tree to map blocks to files, so the profile {} will list chunks only",
                    path.display()
                );
            }
            worker::ProfileTarget::new(absolute(path), &req.name, opened.digest())
        });
        let image = opened.image;
        let opts = worker::MountOptions::default()
            .file_only(req.file_only)
            .stats_path(req.stats.clone())
            .record_profile(target)
            .kernel_readahead_kb(Some(readahead_kb))
            .request_timeout(request_timeout)
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
            // stderr is the log file from here on.
            tracing::info!(image = %req.name, mountpoint = %req.mountpoint.display(), "mounted");
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

/// `path` made absolute (the daemon may change directory).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
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
    crypto: &'static dyn chunk_core::CryptoProvider,
) -> Result<()> {
    let image = open(
        settings,
        name,
        cache_dir,
        LazyImageOptions::default()
            .readahead_chunks(0)
            .crypto(crypto),
    )
    .await?
    .image;
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

/// Tells the user what [`start_prefetch`] did (a stale or unreadable
/// profile is a warning, never a failure) and returns the profile's kernel
/// readahead hint.
fn report_prefetch(name: &str, start: PrefetchStart) -> Option<u32> {
    let hint = start.kernel_readahead_kb();
    match start {
        PrefetchStart::Unreadable(e) => {
            let e = anyhow::Error::from(e);
            eprintln!("lode: warning: not using the stored profile: {e:#}");
        }
        PrefetchStart::Unfit { profile, why } => {
            eprintln!("lode: warning: not prefetching: {profile} does not fit this image: {why}");
        }
        PrefetchStart::Started {
            chunks,
            concurrency,
            ..
        } => tracing::info!(
            "prefetching {chunks} chunks of {name} from {PROFILES}/{name} ({concurrency} at once)"
        ),
        _ => {}
    }
    hint
}

/// Serves the image `name` over NBD until Ctrl-C or SIGTERM.
pub async fn serve_nbd(
    settings: &Settings,
    name: &str,
    listen: Option<&str>,
    prefetch: Prefetch,
    crypto: &'static dyn chunk_core::CryptoProvider,
) -> Result<()> {
    use worker::nbd::{ListenAddr, NbdOptions, NbdServer};
    // The process will hold the image's keys: no core dumps, no ptrace.
    worker::make_undumpable()?;
    let addr = match listen {
        Some(listen) => listen
            .parse()
            .with_context(|| format!("listen address {listen:?}"))?,
        None => {
            let path = worker::nbd::default_socket_path(Path::new(worker::DEFAULT_STATE_DIR), name);
            if let Some(dir) = path.parent() {
                worker::create_private_dir(dir)?;
            }
            ListenAddr::Unix(path)
        }
    };
    if let ListenAddr::Tcp(sa) = &addr {
        eprintln!(
            "lode: warning: NBD has no authentication: anyone who can connect to {sa} reads \
             the decrypted image (the default, a Unix socket only root can reach, is safe)"
        );
    }
    let listen = addr.to_string();
    let opened = open(
        settings,
        name,
        settings.cache_dir.as_deref(),
        LazyImageOptions::default()
            .readahead_chunks(4)
            .crypto(crypto),
    )
    .await?;
    if let Some(kb) = report_prefetch(name, start_prefetch(&opened, name, prefetch).await) {
        // The NBD client owns its block device and its readahead.
        tracing::info!(
            kernel_readahead_kb = kb,
            "{PROFILES}/{name} asks for kernel readahead {kb} KiB: set it on the client's device \
             (e.g. blockdev --setra {} /dev/nbdX)",
            u64::from(kb) * 2
        );
    }
    let image = opened.image;
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
