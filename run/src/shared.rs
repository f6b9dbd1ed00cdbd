//! One lazy mount per image, shared by every run of it on the machine.
//!
//! Under `STATE/images/NAME/`: `lock` (an `flock` held while the count
//! changes), `refs/PID` (one file per live run) and `rootfs/` (the
//! read-only ext4 mountpoint). The first run in mounts; the last one out
//! unmounts. A run killed without cleaning up leaves a `refs/PID` whose
//! process is gone: the next acquire or release prunes it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Mounts and unmounts an image's read-only ext4 (e.g. a `lode mount`
/// daemon). Errors are messages for the user.
pub trait Mounter {
    /// Mounts `image` read-only at `at` and returns once it is ready.
    fn mount(&self, image: &str, at: &Path) -> std::result::Result<(), String>;
    /// Unmounts what [`mount`](Self::mount) mounted at `at`.
    fn unmount(&self, at: &Path) -> std::result::Result<(), String>;
}

/// A reference to an image's shared mount; [`release`](Self::release) it.
#[derive(Debug)]
pub struct SharedMount {
    dir: PathBuf,
    image: String,
    released: bool,
}

/// Held while alive: the flock goes with the file.
struct Lock {
    _file: File,
}

impl Lock {
    fn take(dir: &Path) -> Result<Self> {
        let path = dir.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| io("opening lock", &path, source))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io("locking", &path, std::io::Error::last_os_error()));
        }
        Ok(Lock { _file: f })
    }
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `path` is a mountpoint (its device differs from its parent's).
pub fn is_mountpoint(path: &Path) -> bool {
    let (Ok(m), Some(parent)) = (std::fs::metadata(path), path.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != m.dev())
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Live references, after removing those of processes that are gone.
fn live_refs(refs: &Path) -> Result<Vec<u32>> {
    let mut live = Vec::new();
    let rd = std::fs::read_dir(refs).map_err(|source| io("reading", refs, source))?;
    for e in rd.flatten() {
        match e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
            Some(pid) if alive(pid) => live.push(pid),
            _ => {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(live)
}

impl SharedMount {
    /// Takes a reference on `image`'s mount under `state_dir`, mounting it
    /// with `mounter` when this is the first.
    pub fn acquire(state_dir: &Path, image: &str, mounter: &dyn Mounter) -> Result<Self> {
        let dir = state_dir.join("images").join(image);
        let refs = dir.join("refs");
        let rootfs = dir.join("rootfs");
        for d in [&refs, &rootfs] {
            std::fs::create_dir_all(d).map_err(|source| io("creating", d, source))?;
        }
        let _lock = Lock::take(&dir)?;
        let live = live_refs(&refs)?;
        if live.is_empty() {
            if is_mountpoint(&rootfs) {
                // Left by a run that was killed: ours to reuse only if it
                // is a lode mount; anything else is someone else's.
                if !is_lode_mount(&rootfs) {
                    return Err(Error::MountpointInUse { path: rootfs });
                }
                let _ = mounter.unmount(&rootfs);
            }
            if std::fs::read_dir(&rootfs).is_ok_and(|mut d| d.next().is_some()) {
                return Err(Error::MountpointInUse { path: rootfs });
            }
            mounter
                .mount(image, &rootfs)
                .map_err(|reason| Error::Mount {
                    image: image.to_owned(),
                    path: rootfs.clone(),
                    reason,
                })?;
        } else if !is_mountpoint(&rootfs) {
            return Err(Error::Mount {
                image: image.to_owned(),
                path: rootfs,
                reason: "other runs hold it, but it is not mounted".into(),
            });
        }
        let me = refs.join(std::process::id().to_string());
        std::fs::write(&me, b"").map_err(|source| io("writing", &me, source))?;
        Ok(SharedMount {
            dir,
            image: image.to_owned(),
            released: false,
        })
    }

    /// The read-only root filesystem.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The image name.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// Drops this reference; the last one out unmounts.
    pub fn release(mut self, mounter: &dyn Mounter) -> Result<()> {
        self.released = true;
        let _lock = Lock::take(&self.dir)?;
        let refs = self.dir.join("refs");
        let _ = std::fs::remove_file(refs.join(std::process::id().to_string()));
        if live_refs(&refs)?.is_empty() {
            let rootfs = self.rootfs();
            mounter.unmount(&rootfs).map_err(|reason| Error::Mount {
                image: self.image.clone(),
                path: rootfs,
                reason: format!("unmounting: {reason}"),
            })?;
        }
        Ok(())
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        if !self.released {
            tracing::warn!(image = %self.image, "shared mount reference dropped without release");
        }
    }
}

/// Whether the mount at `path` is a lode mount (its source is `lode:…`).
fn is_lode_mount(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-");
        f.get(4) == Some(&want.as_ref())
            && sep
                .and_then(|s| f.get(s + 2))
                .is_some_and(|src| src.starts_with("lode:") || src.starts_with("/dev/loop"))
    })
}
