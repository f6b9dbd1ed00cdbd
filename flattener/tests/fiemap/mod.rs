//! The `FS_IOC_FIEMAP` ioctl: where the kernel maps a file's blocks. Shared
//! by the hot-layout tests and `examples/hot_trace.rs` (via `#[path]`).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// ext4 block size of the images.
const BLOCK: u64 = 4096;

/// (logical block -> physical block) of `path` as the kernel maps it.
pub(crate) fn fiemap(path: &Path) -> std::io::Result<BTreeMap<u64, u64>> {
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const EXTENT_LAST: u32 = 1;
    const COUNT: usize = 64;
    let f = File::open(path)?;
    let mut map = BTreeMap::new();
    let mut start = 0u64;
    loop {
        // struct fiemap (32 bytes) + COUNT struct fiemap_extent (56 bytes).
        let mut buf = vec![0u64; (32 + 56 * COUNT) / 8];
        buf[0] = start;
        buf[1] = u64::MAX - start;
        buf[3] = COUNT as u64; // fm_extent_count (low half of word 3)
        // SAFETY: the buffer is a struct fiemap with room for COUNT extents.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, buf.as_mut_ptr()) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mapped = (buf[2] >> 32) as usize;
        let mut last = false;
        for i in 0..mapped {
            let e = &buf[4 + 7 * i..4 + 7 * (i + 1)];
            let (logical, physical, len) = (e[0], e[1], e[2]);
            for k in 0..len / BLOCK {
                map.insert(logical / BLOCK + k, physical / BLOCK + k);
            }
            start = logical + len;
            last = (e[5] as u32) & EXTENT_LAST != 0;
        }
        if mapped == 0 || last {
            return Ok(map);
        }
    }
}
