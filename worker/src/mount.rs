//! Mounting a [`LazyImage`]: FUSE file → read-only loop device → ext4.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::LazyImage;
use crate::error::{Chain, Error, MountProblem, Result};
use crate::fuse::ImageFs;
use crate::hardening::create_private_dir;
use crate::loopdev::LoopDevice;
use crate::profile::{BlockMap, Profile};

/// The FUSE request timeout the kernel takes for `t`: whole seconds (a
/// part second rounds up), `None` for zero (never time out), at most 65535 s.
pub fn kernel_request_timeout(t: Duration) -> Result<Option<Duration>> {
    if t.is_zero() {
        return Ok(None);
    }
    let secs = t.as_secs() + u64::from(t.subsec_nanos() > 0);
    if secs > u64::from(u16::MAX) {
        return Err(Error::RequestTimeout { secs });
    }
    Ok(Some(Duration::from_secs(secs)))
}

/// Where mount state files live unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/lode";

use crate::DEFAULT_KERNEL_READAHEAD_KB;

/// How to mount an image.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MountOptions {
    /// Stop after the FUSE file: mount FUSE at the mountpoint itself, so the
    /// image is `MOUNTPOINT/<file_name>`; no loop device, no ext4.
    pub file_only: bool,
    /// Where to mount FUSE when not `file_only`; default
    /// `<state_dir>/<key>.fuse` (created and removed by us).
    pub fuse_dir: Option<PathBuf>,
    /// Name of the image file inside the FUSE directory.
    pub file_name: String,
    /// Directory for state files (`<key>.json`, one per mountpoint).
    pub state_dir: PathBuf,
    /// Write the image's stats as JSON here at unmount.
    pub stats_path: Option<PathBuf>,
    /// A label shown as the FUSE source in `/proc/mounts` (e.g. the image name).
    pub source_name: String,
    /// FUSE request threads (reads themselves run on the tokio runtime).
    pub fuse_threads: usize,
    /// Let other users reach the FUSE file system (`allow_other`). Default
    /// off: only root (the mounting user) reaches it; the loop device reads
    /// the file as root. Even with it, the file is mode 0400 owned by root
    /// and the kernel checks that (`default_permissions`).
    pub allow_other: bool,
    /// ext4 mount data. Default `noload,inode_readahead_blks=0`: `noload`
    /// never replays a journal on a read-only image; without inode-table
    /// readahead the kernel reads only the inode-table blocks a lookup needs
    /// (the whole 512 KiB chunk is fetched anyway, so ext4's 32-block
    /// readahead only reaches into further chunks): python-app fetches 98
    /// chunks instead of 99, and on an image laid out by a profile, whose
    /// start-up inodes are numbered first, 39 instead of 40 (the kernel's
    /// readahead window reads one block past its end, into the next chunk).
    pub ext4_data: String,
    /// Write a prefetch profile when the mount ends (the image must record:
    /// [`LazyImageOptions::record`](crate::LazyImageOptions::record)).
    /// While recording, ext4 is always mounted with `inode_readahead_blks=0`
    /// (added to [`ext4_data`](Self::ext4_data) unless it sets that option):
    /// the profile then names the files whose inodes were looked up, not
    /// their neighbours in the next 31 blocks.
    pub record_profile: Option<ProfileTarget>,
    /// Kernel readahead of the loop device in KiB (`read_ahead_kb`); `None`
    /// keeps the kernel's default (often several MiB). Readahead runs in
    /// file order, so on a lazily fetched image it trades chunks fetched for
    /// fewer, larger requests. Default 128: python-numpy starts in 0.50 s
    /// fetching 121 chunks, against 0.68 s and 117 chunks at 0 and 0.48 s and
    /// 166 chunks at the kernel's 2560 (`bench/cold-start.sh`). An image laid
    /// out by a profile (a hot region) wants 0, when recording the profile and
    /// when mounting: readahead in file order reaches the cold copies.
    pub kernel_readahead_kb: Option<u32>,
    /// How long the kernel lets a FUSE request wait for this daemon before
    /// it aborts the connection (Linux >= 6.14, FUSE_REQUEST_TIMEOUT): with
    /// the daemon hung (stopped, deadlocked), readers then fail with an
    /// error instead of hanging in D state, and every later read of the
    /// mount fails too (the connection is gone; `lode umount` and a new
    /// mount recover). Whole seconds; the kernel checks every 15 s and
    /// raises a shorter timeout to that, and caps it at
    /// `/proc/sys/fs/fuse/max_request_timeout` when set. Must exceed the
    /// slowest honest read (a store timeout plus retries). `None`: no
    /// timeout of ours (the kernel's `default_request_timeout`, if any,
    /// applies). Default [`DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Option<Duration>,
}

/// Default [`MountOptions::request_timeout`]: 60 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and for which manifest a mount writes its prefetch profile.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProfileTarget {
    /// The profile file to write.
    pub path: PathBuf,
    /// Image name recorded in the profile.
    pub image: String,
    /// Hex public digest of the manifest the image was opened from.
    pub manifest_digest: String,
}

impl ProfileTarget {
    /// A profile of `image` (manifest public digest `manifest_digest`, hex) written to `path`.
    pub fn new(
        path: impl Into<PathBuf>,
        image: impl Into<String>,
        manifest_digest: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            image: image.into(),
            manifest_digest: manifest_digest.into(),
        }
    }
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            file_only: false,
            fuse_dir: None,
            file_name: "image".into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            stats_path: None,
            source_name: "lode".into(),
            fuse_threads: 2,
            allow_other: false,
            ext4_data: "noload,inode_readahead_blks=0".into(),
            record_profile: None,
            kernel_readahead_kb: Some(DEFAULT_KERNEL_READAHEAD_KB),
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
        }
    }
}

impl MountOptions {
    /// The ext4 mount data used: [`ext4_data`](Self::ext4_data), plus
    /// `inode_readahead_blks=0` when recording a profile.
    pub fn mount_data(&self) -> String {
        let mut data = self.ext4_data.clone();
        if self.record_profile.is_some()
            && !data
                .split(',')
                .any(|o| o.trim().starts_with("inode_readahead_blks="))
        {
            if !data.is_empty() {
                data.push(',');
            }
            data.push_str("inode_readahead_blks=0");
        }
        data
    }

    /// Sets [`file_only`](Self::file_only).
    #[must_use]
    pub fn file_only(mut self, yes: bool) -> Self {
        self.file_only = yes;
        self
    }
    /// Sets [`state_dir`](Self::state_dir).
    #[must_use]
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = dir.into();
        self
    }
    /// Sets [`stats_path`](Self::stats_path).
    #[must_use]
    pub fn stats_path(mut self, path: Option<PathBuf>) -> Self {
        self.stats_path = path;
        self
    }
    /// Sets [`fuse_dir`](Self::fuse_dir).
    #[must_use]
    pub fn fuse_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.fuse_dir = dir;
        self
    }
    /// Sets [`record_profile`](Self::record_profile).
    #[must_use]
    pub fn record_profile(mut self, target: Option<ProfileTarget>) -> Self {
        self.record_profile = target;
        self
    }
    /// Sets [`kernel_readahead_kb`](Self::kernel_readahead_kb).
    #[must_use]
    pub fn kernel_readahead_kb(mut self, kb: Option<u32>) -> Self {
        self.kernel_readahead_kb = kb;
        self
    }
    /// Sets [`request_timeout`](Self::request_timeout) (`None` or zero: none).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout.filter(|t| !t.is_zero());
        self
    }
    /// Sets [`source_name`](Self::source_name).
    #[must_use]
    pub fn source_name(mut self, name: impl Into<String>) -> Self {
        self.source_name = name.into();
        self
    }
}

/// What a running mount records in `<state_dir>/<key>.json`, so that
/// [`unmount`] (another process) can find and end it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MountState {
    /// Process serving the FUSE file.
    pub pid: u32,
    /// Its start time (clock ticks after boot), to detect pid reuse.
    pub pid_start: u64,
    /// The user's mountpoint.
    pub mountpoint: PathBuf,
    /// Where FUSE is mounted.
    pub fuse_dir: PathBuf,
    /// Whether we created `fuse_dir` (and remove it).
    pub owns_fuse_dir: bool,
    /// The image file on the FUSE mount.
    pub image_file: PathBuf,
    /// The loop device, unless `file_only`.
    pub loop_device: Option<PathBuf>,
    /// Whether only the FUSE file is mounted.
    pub file_only: bool,
    /// Where stats are written at unmount.
    pub stats_path: Option<PathBuf>,
    /// The FUSE connection id (its name under `/sys/fs/fuse/connections`).
    #[serde(default)]
    pub fuse_conn: Option<u64>,
    /// Where a prefetch profile is written at unmount (the serving process
    /// must map blocks to files before ext4 goes, so [`unmount`] asks it to
    /// end first).
    #[serde(default)]
    pub profile_path: Option<PathBuf>,
}

/// A mounted image. [`wait`](Self::wait) serves until unmounted or signalled;
/// [`unmount`](Self::unmount) tears down now. Dropping the handle without
/// either also tears down.
#[derive(Debug)]
pub struct MountHandle {
    image: LazyImage,
    state: MountState,
    state_path: PathBuf,
    session: Option<JoinHandle<std::io::Result<()>>>,
    ended: Option<mpsc::Receiver<()>>,
    profile: Option<ProfileTarget>,
    done: bool,
}

/// A key for a mountpoint: 16 hex digits of SHA-256 of its absolute path.
fn key_of(mountpoint: &Path) -> String {
    let digest = Sha256::digest(mountpoint.as_os_str().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io("resolving", path, e))
}

/// Path of the state file for a mountpoint.
pub fn state_path(state_dir: &Path, mountpoint: &Path) -> Result<PathBuf> {
    Ok(state_dir.join(format!("{}.json", key_of(&absolute(mountpoint)?))))
}

/// Mounts `image`: FUSE file, read-only loop device, read-only ext4 at
/// `mountpoint` (or only the FUSE file, see [`MountOptions::file_only`]).
///
/// Returns once everything is mounted and the state file is written. The
/// image's runtime must be a multi-thread runtime that is not blocked: FUSE
/// reads are answered by tasks spawned on it. Needs root, `/dev/fuse`, and
/// loop devices unless `file_only`.
pub fn mount(image: LazyImage, mountpoint: &Path, opts: &MountOptions) -> Result<MountHandle> {
    let mountpoint = absolute(mountpoint)?;
    if !mountpoint.is_dir() {
        return Err(Error::Mount {
            mountpoint,
            problem: MountProblem::NotADirectory,
        });
    }
    create_private_dir(&opts.state_dir)?;
    let key = key_of(&mountpoint);
    let state_path = opts.state_dir.join(format!("{key}.json"));
    if let Ok(old) = read_state(&state_path) {
        if process_alive(old.pid, old.pid_start) {
            return Err(Error::Mount {
                mountpoint,
                problem: MountProblem::AlreadyServed { pid: old.pid },
            });
        }
        // A crashed daemon left its state: clean up what it left.
        tracing::warn!(mountpoint = %mountpoint.display(), pid = old.pid, "cleaning up a stale mount");
        cleanup_dead(&old, &state_path);
    }

    let (fuse_dir, owns_fuse_dir) = if opts.file_only {
        (mountpoint.clone(), false)
    } else if let Some(dir) = &opts.fuse_dir {
        (absolute(dir)?, false)
    } else {
        let dir = opts.state_dir.join(format!("{key}.fuse"));
        create_private_dir(&dir)?;
        (dir, true)
    };
    let image_file = fuse_dir.join(&opts.file_name);

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        // The kernel checks the file's mode (0400, root) on every access.
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::FSName(opts.source_name.clone()),
        fuser::MountOption::Subtype("lode".into()),
    ];
    if opts.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(opts.fuse_threads.max(1));
    config.clone_fd = opts.fuse_threads > 1;
    let fs = ImageFs::new(image.clone(), &opts.file_name, opts.request_timeout);
    let session = fuser::Session::new(fs, &fuse_dir, &config)
        .map_err(|e| Error::io("mounting FUSE at", &fuse_dir, e))?;
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("lode-fuse".into())
        .spawn(move || {
            let r = session.run();
            let _ = tx.send(());
            r
        })
        .map_err(|e| Error::io("starting FUSE thread for", &fuse_dir, e))?;

    let mut handle = MountHandle {
        image,
        state: MountState {
            pid: std::process::id(),
            pid_start: process_start(std::process::id()).unwrap_or(0),
            mountpoint: mountpoint.clone(),
            fuse_dir: fuse_dir.clone(),
            owns_fuse_dir,
            image_file: image_file.clone(),
            loop_device: None,
            file_only: opts.file_only,
            stats_path: opts.stats_path.clone(),
            fuse_conn: fuse_connection_id(&fuse_dir),
            profile_path: opts.record_profile.as_ref().map(|t| t.path.clone()),
        },
        state_path,
        session: Some(thread),
        ended: Some(rx),
        profile: opts.record_profile.clone(),
        done: false,
    };

    if !opts.file_only {
        // On error the handle's drop unmounts FUSE again.
        let dev = LoopDevice::attach_read_only(&image_file)?;
        handle.state.loop_device = Some(dev.path().to_path_buf());
        if let Some(kb) = opts.kernel_readahead_kb {
            dev.set_read_ahead_kb(kb)?;
        }
        if !dev.direct_io() {
            tracing::warn!(
                loop_device = %dev.path().display(),
                "the loop device reads the FUSE file through the page cache (no direct I/O): \
                 pages are cached twice and FUSE readahead fetches more chunks"
            );
        }
        sys_mount(
            dev.path(),
            &mountpoint,
            "ext4",
            libc::MS_RDONLY,
            &opts.mount_data(),
        )?;
        // The mount holds the device now; autoclear frees it after umount.
        dev.release();
    }
    write_state(&handle.state_path, &handle.state)?;
    tracing::debug!(
        mountpoint = %mountpoint.display(),
        file = %image_file.display(),
        loop_device = ?handle.state.loop_device,
        "mounted"
    );
    Ok(handle)
}

impl MountHandle {
    /// What was mounted where.
    pub fn state(&self) -> &MountState {
        &self.state
    }

    /// The image being served.
    pub fn image(&self) -> &LazyImage {
        &self.image
    }

    /// Serves until the FUSE file system is unmounted (for example by
    /// [`unmount`] from another process) or SIGTERM, SIGINT or SIGHUP
    /// arrives, then tears down (ext4, loop, FUSE), writes the stats file and
    /// removes the state file. Call from outside the runtime (it blocks on it).
    pub fn wait(mut self) -> Result<()> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::BlockingInRuntime);
        }
        let ended = self.ended.take();
        let rt = self.image.runtime().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        if let Some(ended) = ended {
            std::thread::spawn(move || {
                let _ = ended.recv();
                let _ = tx.send(());
            });
        }
        let why = rt.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).ok();
            let mut int = signal(SignalKind::interrupt()).ok();
            let mut hup = signal(SignalKind::hangup()).ok();
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = rx => "FUSE file system unmounted",
                _ = next(&mut term) => "SIGTERM",
                _ = next(&mut int) => "SIGINT",
                _ = next(&mut hup) => "SIGHUP",
            }
        });
        tracing::info!(reason = why, mountpoint = %self.state.mountpoint.display(), "unmounting");
        self.teardown()
    }

    /// Unmounts now: ext4 (lazily if busy), loop device, FUSE; writes stats.
    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let mut first_err = None;
        let mut keep = |r: Result<()>| {
            if let Err(e) = r {
                tracing::error!(error = %Chain(&e), "teardown step failed");
                first_err.get_or_insert(e);
            }
        };
        if let Some(target) = self.profile.take() {
            keep(self.write_profile(&target));
        }
        if !self.state.file_only && is_mount_point(&self.state.mountpoint) {
            // We are going away: a busy ext4 is detached lazily; its readers
            // get EIO once FUSE is gone instead of hanging.
            keep(sys_umount(&self.state.mountpoint, libc::MNT_DETACH));
        }
        keep(unmount_fuse(&self.state.fuse_dir));
        if let Some(t) = self.session.take() {
            // After a lazy unmount the connection lives while files on it are
            // open; abort it so the session (and we) can end, and open files
            // get ENOTCONN instead of a daemon that never answers.
            let finished = |t: &JoinHandle<_>, secs| {
                let deadline = Instant::now() + Duration::from_secs(secs);
                while !t.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                t.is_finished()
            };
            if !finished(&t, 2)
                && let Some(conn) = self.state.fuse_conn
            {
                abort_fuse_connection(conn);
            }
            if finished(&t, 5) {
                match t.join() {
                    Ok(Err(e)) => tracing::warn!(error = %e, "FUSE session ended with an error"),
                    Err(_) => tracing::error!("FUSE session thread panicked"),
                    Ok(Ok(())) => {}
                }
            } else {
                tracing::error!("FUSE session did not end; leaving its thread behind");
            }
        }
        if let Some(path) = &self.state.stats_path {
            keep(self.image.write_stats(path));
        }
        if self.state.owns_fuse_dir {
            let _ = std::fs::remove_dir(&self.state.fuse_dir);
        }
        let _ = std::fs::remove_file(&self.state_path);
        first_err.map_or(Ok(()), Err)
    }
}

impl MountHandle {
    /// Stops recording, maps the recorded blocks to files through the still
    /// mounted ext4 tree (FIEMAP), and writes the profile.
    fn write_profile(&self, target: &ProfileTarget) -> Result<()> {
        self.image.stop_recording();
        let map = if self.state.file_only {
            tracing::warn!(
                profile = %target.path.display(),
                "file-only mount: no ext4 tree to map blocks to files; the profile holds chunks only"
            );
            None
        } else if !is_mount_point(&self.state.mountpoint) {
            tracing::warn!(
                profile = %target.path.display(),
                mountpoint = %self.state.mountpoint.display(),
                "ext4 is no longer mounted; the profile holds chunks only"
            );
            None
        } else {
            match BlockMap::from_mounted_tree(&self.state.mountpoint) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(error = %Chain(&e), "mapping blocks to files failed; the profile holds chunks only");
                    None
                }
            }
        };
        let profile = Profile::record(
            &target.image,
            &target.manifest_digest,
            &self.image,
            map.as_ref(),
        );
        profile.save(&target.path)?;
        tracing::info!(
            profile = %target.path.display(),
            chunks = profile.chunks.len(),
            files = profile.files.len(),
            unmapped_blocks = profile.unmapped_blocks,
            "prefetch profile written"
        );
        Ok(())
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!(error = %Chain(&e), "unmount on drop failed");
        }
    }
}

/// Ends the lode mount at `mountpoint` from any process (`lode umount`):
/// unmounts ext4 (fails with a clear error if it is busy, leaving everything
/// as it was), asks the serving process to end (SIGTERM; it writes its
/// stats) and waits for it, then removes whatever a crashed daemon left
/// (FUSE mount, state file). The loop device detaches itself (autoclear).
///
/// A mount that records a prefetch profile must map blocks to files while
/// ext4 is still mounted: after checking that ext4 is not busy, the serving
/// process is asked to end first; it writes the profile, then unmounts
/// everything itself.
pub fn unmount(mountpoint: &Path, state_dir: &Path) -> Result<MountState> {
    let mountpoint = absolute(mountpoint)?;
    let state_path = state_dir.join(format!("{}.json", key_of(&mountpoint)));
    let state = match read_state(&state_path) {
        Ok(s) => s,
        Err(_) => return Err(Error::NotMounted(mountpoint)),
    };
    let serving = state.pid != std::process::id() && process_alive(state.pid, state.pid_start);
    if serving && state.profile_path.is_some() {
        // The daemon maps recorded blocks to files through the mounted tree:
        // let it end (and unmount) itself. Refuse first, changing nothing,
        // when ext4 is busy (MNT_EXPIRE only marks an idle mount: EAGAIN).
        if !state.file_only && is_mount_point(&state.mountpoint) {
            match sys_umount(&state.mountpoint, libc::MNT_EXPIRE) {
                Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(busy(&state.mountpoint));
                }
                Ok(()) | Err(_) => {}
            }
        }
        stop_daemon(&state, Duration::from_secs(600))?;
        cleanup_dead(&state, &state_path);
        return Ok(state);
    }
    if !state.file_only && is_mount_point(&state.mountpoint) {
        match sys_umount(&state.mountpoint, 0) {
            Ok(()) => {}
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
                return Err(busy(&state.mountpoint));
            }
            Err(e) => return Err(e),
        }
    }
    if serving {
        stop_daemon(&state, Duration::from_secs(30))?;
    }
    cleanup_dead(&state, &state_path);
    Ok(state)
}

fn busy(mountpoint: &Path) -> Error {
    Error::Mount {
        mountpoint: mountpoint.to_path_buf(),
        problem: MountProblem::Busy,
    }
}

/// Sends SIGTERM to the serving process and waits until it has exited.
fn stop_daemon(state: &MountState, patience: Duration) -> Result<()> {
    // SAFETY: plain kill(2) to a pid we verified by its start time.
    unsafe { libc::kill(state.pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + patience;
    while process_alive(state.pid, state.pid_start) {
        if Instant::now() > deadline {
            return Err(Error::Mount {
                mountpoint: state.mountpoint.clone(),
                problem: MountProblem::DaemonDidNotExit {
                    pid: state.pid,
                    waited: patience,
                },
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// All lode mounts with a state file in `state_dir` (live or stale).
pub fn mounts(state_dir: &Path) -> Result<Vec<MountState>> {
    let dir = match std::fs::read_dir(state_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", state_dir, e)),
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "json")
            && let Ok(s) = read_state(&p)
        {
            out.push(s);
        }
    }
    Ok(out)
}

/// Removes what a dead (or finished) daemon left behind.
fn cleanup_dead(state: &MountState, state_path: &Path) {
    if !state.file_only && is_mount_point(&state.mountpoint) {
        let _ = sys_umount(&state.mountpoint, libc::MNT_DETACH);
    }
    if is_mount_point(&state.fuse_dir) {
        let _ = unmount_fuse(&state.fuse_dir);
    }
    if state.owns_fuse_dir {
        let _ = std::fs::remove_dir(&state.fuse_dir);
    }
    let _ = std::fs::remove_file(state_path);
}

/// Unmounts FUSE, waiting a little for the loop device to let go of the file
/// (autoclear runs asynchronously after the ext4 umount), then lazily.
fn unmount_fuse(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if !is_mount_point(dir) {
            return Ok(());
        }
        match sys_umount(dir, 0) {
            Ok(()) => return Ok(()),
            Err(Error::Io { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
                return sys_umount(dir, libc::MNT_DETACH);
            }
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// The kernel's id of the FUSE connection mounted at `dir` (its `s_dev`).
fn fuse_connection_id(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (u64::from(libc::major(dev)), u64::from(libc::minor(dev)));
    Some((major << 20) | minor)
}

/// Aborts a FUSE connection through fusectl (mounting fusectl if needed).
fn abort_fuse_connection(conn: u64) {
    let ctl = Path::new("/sys/fs/fuse/connections");
    if !is_mount_point(ctl) {
        let _ = sys_mount(Path::new("fusectl"), ctl, "fusectl", 0, "");
    }
    let abort = ctl.join(conn.to_string()).join("abort");
    match std::fs::write(&abort, b"1") {
        Ok(()) => tracing::warn!(connection = conn, "aborted the FUSE connection"),
        Err(e) => {
            tracing::error!(path = %abort.display(), error = %e, "could not abort the FUSE connection")
        }
    }
}

/// `value` as a C string for mount(2) or umount2(2) at `target`.
fn cstring(target: &Path, what: &'static str, value: &[u8]) -> Result<CString> {
    CString::new(value).map_err(|_| Error::Mount {
        mountpoint: target.to_path_buf(),
        problem: MountProblem::NulByte {
            what,
            value: String::from_utf8_lossy(value).into_owned(),
        },
    })
}

fn sys_mount(
    source: &Path,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<()> {
    let src = cstring(target, "source", source.as_os_str().as_bytes())?;
    let tgt = cstring(target, "target", target.as_os_str().as_bytes())?;
    let fst = cstring(target, "file system type", fstype.as_bytes())?;
    let dat = cstring(target, "mount data", data.as_bytes())?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fst.as_ptr(),
            flags,
            dat.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(Error::io(
            "mounting ext4 at",
            target,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn sys_umount(target: &Path, flags: libc::c_int) -> Result<()> {
    let tgt = cstring(target, "target", target.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(tgt.as_ptr(), flags) } != 0 {
        return Err(Error::io(
            "unmounting",
            target,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Whether `path` is a mount point (from /proc/self/mountinfo; does not touch
/// the path itself, which may be a dead FUSE mount).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime); the command name (field 2) may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

fn process_alive(pid: u32, start: u64) -> bool {
    match process_start(pid) {
        // A zombie is not serving anything.
        Some(s) => {
            (start == 0 || s == start)
                && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
                    st.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
        }
        None => false,
    }
}

fn read_state(path: &Path) -> Result<MountState> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::io(
            "parsing",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })
}

fn write_state(path: &Path, state: &MountState) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| Error::io("serializing", path, std::io::Error::other(e)))?;
    std::fs::write(&tmp, json).map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_timeout_is_whole_seconds_zero_none() {
        assert_eq!(kernel_request_timeout(Duration::ZERO).unwrap(), None);
        let t = |ms| kernel_request_timeout(Duration::from_millis(ms)).unwrap();
        assert_eq!(t(1500), Some(Duration::from_secs(2)));
        assert_eq!(t(60_000), Some(Duration::from_secs(60)));
        assert!(kernel_request_timeout(Duration::from_secs(65536)).is_err());
    }

    #[test]
    fn mountinfo_escapes_and_keys() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/x\\y"), br"/x\\y");
        assert!(is_mount_point(Path::new("/proc")));
        assert!(!is_mount_point(Path::new("/proc/self")));
        assert_eq!(key_of(Path::new("/mnt/a")).len(), 16);
        assert_ne!(key_of(Path::new("/mnt/a")), key_of(Path::new("/mnt/b")));
    }

    #[test]
    fn recording_mounts_read_no_inode_table_ahead() {
        let plain = MountOptions::default();
        assert_eq!(plain.mount_data(), "noload,inode_readahead_blks=0");
        let mut rec = plain.record_profile(Some(ProfileTarget::new("/p", "i", "00")));
        assert_eq!(rec.mount_data(), "noload,inode_readahead_blks=0");
        rec.ext4_data = "noload".into();
        assert_eq!(rec.mount_data(), "noload,inode_readahead_blks=0");
        let mut own = rec.clone();
        own.ext4_data = "noload,inode_readahead_blks=4".into();
        assert_eq!(own.mount_data(), "noload,inode_readahead_blks=4");
        own.ext4_data = String::new();
        assert_eq!(own.mount_data(), "inode_readahead_blks=0");
    }

    #[test]
    fn own_process_is_alive_and_identified_by_start_time() {
        let me = std::process::id();
        let start = process_start(me).expect("own /proc/pid/stat");
        assert!(process_alive(me, start));
        assert!(!process_alive(me, start + 1));
        assert!(!process_alive(u32::MAX - 1, 0));
    }

    #[test]
    fn unmount_without_state_is_not_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let e = unmount(&dir.path().join("nothing"), dir.path()).unwrap_err();
        assert!(matches!(e, Error::NotMounted(_)), "{e:?}");
        assert!(mounts(&dir.path().join("none")).unwrap().is_empty());
    }
}
