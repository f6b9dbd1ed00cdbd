//! Helper of `bench/hot-layout.sh`: turns a block trace of a cold start
//! into a [`HotList`] and measures how many 512 KiB chunks a trace touches.
//!
//! ```text
//! hot_trace plain IMAGE_REF OUT            write the image without a hot list
//! hot_trace hot IMAGE_REF PLAIN MOUNT TRACE OUT
//!                                          map TRACE (blocks read from the plain
//!                                          image PLAIN mounted at MOUNT) to a hot
//!                                          list, write the image with it
//! hot_trace count IMAGE TRACE              chunks touched by TRACE
//! ```
//! TRACE: one read per line, `SECTOR COUNT` (512-byte sectors), in order.
//!
//! A block of a file or directory becomes a block of its entry. A block of
//! PLAIN's inode tables becomes one entry without blocks for each
//! non-directory inode in it (16 inodes per block): those inodes were read,
//! so they get early inode numbers (directories get theirs from the
//! lookups of the paths under them; an entry would place them whole). Record the trace with the mount option `inode_readahead_blks=0`
//! so that each inode-table block read is one the start needed.

#[path = "../tests/fiemap/mod.rs"]
mod fiemap;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use flattener::{FlattenOptions, HotEntry, HotList, ImageRef, build_tree, write_flattened_with};

const BLOCK: u64 = 4096;
const CHUNK: u64 = 512 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["plain", image, out] => write(image, None, out),
        ["hot", image, plain, mount, trace, out] => {
            let tables = inode_tables(plain)?;
            let list = hot_list(Path::new(mount), &tables, &read_trace(trace)?)?;
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
        _ => Err("usage: hot_trace plain IMAGE_REF OUT | hot IMAGE_REF PLAIN MOUNT TRACE OUT | count IMAGE TRACE".into()),
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
            "hot region: {:.1} MiB at byte {} ({} file, {} directory, {} extent tree blocks; {} of {} entries skipped; {} inodes numbered first); image {:.1} MiB",
            r.len as f64 / (1 << 20) as f64,
            r.start,
            r.file_blocks,
            r.dir_blocks,
            r.tree_blocks,
            r.entries_skipped,
            hot.map_or(0, |h| h.entries.len()),
            r.inodes,
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

/// Where an image's inode tables are: per group (first block, blocks,
/// first inode number); read from the superblock and group descriptors
/// (4 KiB blocks, 32-byte descriptors, as the flattener writes them).
struct InodeTables {
    groups: Vec<(u64, u64, u64)>,
    inodes_per_block: u64,
}

impl InodeTables {
    /// The inode numbers stored in block `blk`, if it is an inode-table block.
    fn inodes_in(&self, blk: u64) -> Option<std::ops::Range<u64>> {
        self.groups.iter().find_map(|&(start, blocks, first)| {
            (blk >= start && blk < start + blocks).then(|| {
                let ino = first + (blk - start) * self.inodes_per_block;
                ino..ino + self.inodes_per_block
            })
        })
    }
}

fn inode_tables(image: &str) -> Result<InodeTables, Box<dyn std::error::Error>> {
    use std::io::Read;
    let mut head = vec![0u8; 2 * BLOCK as usize];
    File::open(image)?.read_exact(&mut head)?;
    let u32_at = |off: usize| u64::from(u32::from_le_bytes(head[off..off + 4].try_into().unwrap()));
    let sb = 1024;
    if u32_at(sb + 0x18) != 2 {
        return Err("not a 4 KiB-block ext4 image".into());
    }
    let blocks = u32_at(sb + 0x04);
    let per_group = u32_at(sb + 0x20);
    let ipg = u32_at(sb + 0x28);
    let inode_size = u64::from(u16::from_le_bytes([head[sb + 0x58], head[sb + 0x59]]));
    let groups = blocks.div_ceil(per_group);
    let mut gdt = vec![0u8; (groups * 32).next_multiple_of(BLOCK) as usize];
    let mut f = File::open(image)?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(BLOCK))?;
    f.read_exact(&mut gdt)?;
    let inodes_per_block = BLOCK / inode_size;
    let table_blocks = ipg / inodes_per_block;
    Ok(InodeTables {
        groups: (0..groups)
            .map(|g| {
                let d = &gdt[(32 * g) as usize..];
                let start = u64::from(u32::from_le_bytes(d[8..12].try_into().unwrap()));
                (start, table_blocks, g * ipg + 1)
            })
            .collect(),
        inodes_per_block,
    })
}

/// Maps every read block that belongs to a file or directory to (path,
/// logical block), every read inode-table block to its inodes' paths, and
/// lists them in order of first access.
fn hot_list(
    mount: &Path,
    tables: &InodeTables,
    reads: &[u64],
) -> Result<HotList, Box<dyn std::error::Error>> {
    use std::os::unix::fs::MetadataExt;
    let mut owner: BTreeMap<u64, (usize, u64)> = BTreeMap::new();
    let mut paths: Vec<Vec<u8>> = Vec::new();
    // Inode number -> a path of it.
    let mut path_of_ino: BTreeMap<u64, usize> = BTreeMap::new();
    let mut stack = vec![mount.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p)?;
        let rel = p.strip_prefix(mount)?;
        let mut name = b"/".to_vec();
        name.extend_from_slice(rel.as_os_str().as_bytes());
        let id = paths.len();
        paths.push(name);
        // Directories are numbered by the lookups of the paths under them;
        // an entry of their own would place them whole.
        if !md.is_dir() {
            path_of_ino.entry(md.ino()).or_insert(id);
        }
        if !(md.is_dir() || md.is_file()) {
            continue;
        }
        for (l, b) in fiemap::fiemap(&p)? {
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
    let mut inodes_listed: BTreeSet<u64> = BTreeSet::new();
    for b in reads {
        if let Some(inodes) = tables.inodes_in(*b) {
            for ino in inodes {
                if let Some(&id) = path_of_ino.get(&ino)
                    && inodes_listed.insert(ino)
                {
                    list.entries.push(HotEntry {
                        path: paths[id].clone(),
                        blocks: Vec::new(),
                    });
                    last = None;
                }
            }
            continue;
        }
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
        "trace: {} block reads, {} not in a file, directory or inode table (metadata), {} entries ({} inodes of inode-table blocks read)",
        reads.len(),
        unmapped,
        list.entries.len(),
        inodes_listed.len()
    );
    Ok(list)
}
