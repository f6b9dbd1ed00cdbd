//! Helper of `bench/hot-layout.sh`: turns a block trace of a cold start
//! into a [`HotList`] and measures how many 512 KiB chunks a trace touches.
//!
//! ```text
//! hot_trace plain IMAGE_REF OUT            write the image without a hot list
//! hot_trace hot IMAGE_REF MOUNT TRACE OUT  map TRACE (blocks read from the plain
//!                                          image mounted at MOUNT) to a hot list,
//!                                          write the image with it
//! hot_trace count IMAGE TRACE              chunks touched by TRACE
//! ```
//! TRACE: one read per line, `SECTOR COUNT` (512-byte sectors), in order.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use flattener::{FlattenOptions, HotEntry, HotList, ImageRef, build_tree, write_flattened_with};

const BLOCK: u64 = 4096;
const CHUNK: u64 = 512 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["plain", image, out] => write(image, None, out),
        ["hot", image, mount, trace, out] => {
            let list = hot_list(Path::new(mount), &read_trace(trace)?)?;
            write(image, Some(&list), out)
        }
        ["count", image, trace] => {
            let size = std::fs::metadata(image)?.len();
            let reads = read_trace(trace)?;
            let blocks: BTreeSet<u64> = reads.iter().copied().collect();
            let chunks: BTreeSet<u64> = blocks.iter().map(|b| b * BLOCK / CHUNK).collect();
            let total = size / CHUNK;
            println!(
                "{} {} {} {:.1} {:.1}",
                chunks.len(),
                total,
                blocks.len(),
                blocks.len() as f64 * BLOCK as f64 / (1 << 20) as f64,
                100.0 * chunks.len() as f64 / total as f64
            );
            Ok(())
        }
        _ => Err("usage: hot_trace plain IMAGE_REF OUT | hot IMAGE_REF MOUNT TRACE OUT | count IMAGE TRACE".into()),
    }
}

fn write(image: &str, hot: Option<&HotList>, out: &str) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let source = ImageRef::parse(image)?.open(dir.path())?;
    let mut opts = FlattenOptions::default();
    opts.hot = hot;
    let flat = build_tree(&*source, &opts, dir.path())?;
    let (s, _) = write_flattened_with(&flat, &opts, File::create(out)?)?;
    if let Some(r) = s.hot_region {
        eprintln!(
            "hot region: {:.1} MiB at byte {} ({} file, {} directory, {} extent tree blocks; {} of {} entries skipped); image {:.1} MiB",
            r.len as f64 / (1 << 20) as f64,
            r.start,
            r.file_blocks,
            r.dir_blocks,
            r.tree_blocks,
            r.entries_skipped,
            hot.map_or(0, |h| h.entries.len()),
            s.size_bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// Blocks read, in order (a block read twice appears twice).
fn read_trace(path: &str) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for line in std::fs::read_to_string(path)?.lines() {
        let mut it = line.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(sector)), Some(Ok(count))) = (it.next(), it.next()) else {
            continue;
        };
        let first = sector * 512 / BLOCK;
        let end = ((sector + count) * 512).div_ceil(BLOCK);
        out.extend(first..end);
    }
    Ok(out)
}

/// (logical block -> physical block) of `path` (FIEMAP).
fn fiemap(path: &Path) -> std::io::Result<BTreeMap<u64, u64>> {
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const COUNT: usize = 256;
    let f = File::open(path)?;
    let mut map = BTreeMap::new();
    let mut start = 0u64;
    loop {
        let mut buf = vec![0u64; (32 + 56 * COUNT) / 8];
        buf[0] = start;
        buf[1] = u64::MAX - start;
        buf[3] = COUNT as u64;
        // SAFETY: the buffer is a struct fiemap with room for COUNT extents.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, buf.as_mut_ptr()) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mapped = (buf[2] >> 32) as usize;
        let mut last = mapped == 0;
        for i in 0..mapped {
            let e = &buf[4 + 7 * i..4 + 7 * (i + 1)];
            for k in 0..e[2] / BLOCK {
                map.insert(e[0] / BLOCK + k, e[1] / BLOCK + k);
            }
            start = e[0] + e[2];
            last = (e[5] as u32) & 1 != 0;
        }
        if last {
            return Ok(map);
        }
    }
}

/// Maps every read block that belongs to a file or directory to (path,
/// logical block) and lists them in order of first access.
fn hot_list(mount: &Path, reads: &[u64]) -> Result<HotList, Box<dyn std::error::Error>> {
    let mut owner: BTreeMap<u64, (usize, u64)> = BTreeMap::new();
    let mut paths: Vec<Vec<u8>> = Vec::new();
    let mut stack = vec![mount.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p)?;
        if !(md.is_dir() || md.is_file()) {
            continue;
        }
        let rel = p.strip_prefix(mount)?;
        let mut name = b"/".to_vec();
        name.extend_from_slice(rel.as_os_str().as_bytes());
        let id = paths.len();
        paths.push(name);
        for (l, b) in fiemap(&p)? {
            owner.insert(b, (id, l));
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    let mut list = HotList::default();
    let mut last: Option<usize> = None;
    let mut unmapped = 0usize;
    for b in reads {
        let Some(&(id, l)) = owner.get(b) else {
            unmapped += 1;
            continue;
        };
        if last == Some(id) {
            let e = list.entries.last_mut().expect("an entry");
            match e.blocks.last_mut() {
                Some(r) if r.0 + r.1 == l => r.1 += 1,
                _ => e.blocks.push((l, 1)),
            }
        } else {
            list.entries.push(HotEntry {
                path: paths[id].clone(),
                blocks: vec![(l, 1)],
            });
            last = Some(id);
        }
    }
    eprintln!(
        "trace: {} block reads, {} not in a file or directory (metadata), {} entries",
        reads.len(),
        unmapped,
        list.entries.len()
    );
    Ok(list)
}
