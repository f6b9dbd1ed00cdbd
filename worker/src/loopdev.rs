//! Read-only loop devices via the kernel's ioctls (no `losetup` needed).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn info_for(backing: &Path) -> LoopInfo64 {
    let mut name = [0u8; LO_NAME_SIZE];
    let bytes = backing.as_os_str().as_encoded_bytes();
    let n = bytes.len().min(LO_NAME_SIZE - 1);
    name[..n].copy_from_slice(&bytes[..n]);
    LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
        lo_file_name: name,
        lo_crypt_name: [0; LO_NAME_SIZE],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    }
}

/// A read-only loop device with autoclear: the kernel detaches it when the
/// last user (this handle, a mount) goes away, so a crashed daemon leaves
/// no device behind once the ext4 mount is gone. Direct I/O is requested:
/// reads reach the backing file as the filesystem issued them, without a
/// second copy in the backing file's page cache and without its readahead
/// (which on a FUSE file would fetch chunks nobody reads).
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    file: File,
}

impl LoopDevice {
    /// Attaches `backing` read-only to a free loop device.
    pub fn attach_read_only(backing: &Path) -> Result<Self> {
        let backing_file =
            File::open(backing).map_err(|e| Error::io("opening loop backing file", backing, e))?;
        let ctl_path = Path::new("/dev/loop-control");
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .open(ctl_path)
            .map_err(|e| Error::io("opening", ctl_path, e))?;
        // Another process may grab the free device between GET_FREE and
        // configuring it (EBUSY): ask again.
        let mut last_err = None;
        for _ in 0..16 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
            let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(Error::io(
                    "LOOP_CTL_GET_FREE on",
                    ctl_path,
                    std::io::Error::last_os_error(),
                ));
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let file = OpenOptions::new()
                .read(true)
                .open(&path)
                .map_err(|e| Error::io("opening", &path, e))?;
            match configure(&file, &backing_file, backing) {
                Ok(()) => return Ok(Self { path, file }),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last_err = Some((path, e)),
                Err(e) => return Err(Error::io("attaching loop device", path, e)),
            }
        }
        let (path, e) = last_err.unwrap_or_else(|| {
            (
                PathBuf::from("/dev/loop-control"),
                std::io::Error::other("no free loop device"),
            )
        });
        Err(Error::io("attaching loop device (busy)", path, e))
    }

    /// Sets the device's kernel readahead (`queue/read_ahead_kb` in sysfs).
    pub fn set_read_ahead_kb(&self, kb: u32) -> Result<()> {
        let path = self.sysfs().join("queue/read_ahead_kb");
        std::fs::write(&path, format!("{kb}\n"))
            .map_err(|e| Error::io("setting readahead in", &path, e))
    }

    /// True when the kernel reads the backing file with direct I/O, bypassing
    /// its page cache (requested at attach; the kernel may decline).
    pub fn direct_io(&self) -> bool {
        std::fs::read_to_string(self.sysfs().join("loop/dio")).is_ok_and(|s| s.trim() == "1")
    }

    fn sysfs(&self) -> PathBuf {
        let name = self.path.file_name().unwrap_or_default();
        Path::new("/sys/block").join(name)
    }

    /// The device path, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes our handle; with autoclear the device detaches once unused.
    pub fn release(self) {
        drop(self.file);
    }

    /// Detaches now (or, if still in use, as soon as the last user closes it).
    pub fn detach(self) -> Result<()> {
        // SAFETY: LOOP_CLR_FD takes no argument.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), LOOP_CLR_FD) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENXIO) {
                return Err(Error::io("detaching", &self.path, e));
            }
        }
        Ok(())
    }
}

fn configure(dev: &File, backing: &File, backing_path: &Path) -> std::io::Result<()> {
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info: info_for(backing_path),
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` that lives for the call.
    let rc = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_CONFIGURE,
            &config as *const LoopConfig,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOTTY) {
        return Err(e);
    }
    // Kernels before 5.8: SET_FD then SET_STATUS64.
    // SAFETY: LOOP_SET_FD takes the backing file descriptor as its argument.
    if unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_SET_FD,
            backing.as_raw_fd() as libc::c_ulong,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    let info = info_for(backing_path);
    // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64` that lives for the call.
    if unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_SET_STATUS64,
            &info as *const LoopInfo64,
        )
    } < 0
    {
        let e = std::io::Error::last_os_error();
        // SAFETY: as above.
        unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD) };
        return Err(e);
    }
    Ok(())
}

/// The backing file of a loop device, if it is attached (from sysfs).
pub fn backing_file(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?.to_str()?;
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim_end()))
}
