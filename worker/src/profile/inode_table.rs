//! Where an ext4 image keeps its inodes: the inode table of every block
//! group, from the superblock and the group descriptors.
//!
//! A recording mount sees the kernel read inode-table blocks when an
//! application looks files up (`stat`, `open`); [`InodeTables`] turns such a
//! block back into the inode numbers it holds, so a profile can list the
//! files whose inodes were read even when their data was not.

use std::ops::Range;

use crate::LazyImage;
use crate::error::{Error, Result};
use crate::image::BLOCK_SIZE;

/// Byte offset of the superblock.
const SB_OFFSET: u64 = 1024;
/// Bytes of the superblock that are parsed (all fields used lie below).
const SB_LEN: usize = 1024;
const EXT4_MAGIC: u16 = 0xEF53;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
/// Group descriptors read at most (1 TiB of 4 KiB blocks is 8192 groups).
const MAX_GROUPS: u64 = 1 << 20;

/// The inode tables of an ext4 image: inode number ↔ byte offset.
///
/// Inode `n` (from 1) lives in group `(n - 1) / inodes_per_group` at index
/// `(n - 1) % inodes_per_group` of that group's table, `inode_size` bytes
/// each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeTables {
    inodes_per_group: u32,
    inode_size: u32,
    /// Byte offset of each group's inode table, by group.
    tables: Vec<u64>,
    /// `(table offset, group)` sorted by offset, for block lookups.
    by_offset: Vec<(u64, u32)>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// (table offset, group) sorted by offset, to find the group of a block.
fn by_offset(tables: &[u64]) -> Vec<(u64, u32)> {
    let mut v: Vec<(u64, u32)> = tables
        .iter()
        .enumerate()
        .map(|(g, &at)| (at, g as u32))
        .collect();
    v.sort_unstable();
    v
}

impl InodeTables {
    /// Parses the superblock and group descriptors of an ext4 image of
    /// `image_size` bytes; `read(offset, buf)` must fill `buf` from the
    /// image. Every field is checked (magic, sizes, table locations inside
    /// the image); the error says what is wrong. `meta_bg` images (whose
    /// descriptors are scattered) are not supported.
    pub fn parse(
        image_size: u64,
        mut read: impl FnMut(u64, &mut [u8]) -> std::result::Result<(), String>,
    ) -> std::result::Result<Self, String> {
        if image_size < SB_OFFSET + SB_LEN as u64 {
            return Err(format!(
                "image of {image_size} bytes is too small for an ext4 superblock"
            ));
        }
        let mut sb = [0u8; SB_LEN];
        read(SB_OFFSET, &mut sb).map_err(|e| format!("reading the superblock: {e}"))?;
        let magic = le16(&sb, 0x38);
        if magic != EXT4_MAGIC {
            return Err(format!("no ext4 superblock (magic {magic:#06x})"));
        }
        let log_block_size = le32(&sb, 0x18);
        if log_block_size > 6 {
            return Err(format!("s_log_block_size {log_block_size} is out of range"));
        }
        let block_size = 1024u64 << log_block_size;
        let first_data_block = u64::from(le32(&sb, 0x14));
        let blocks_per_group = u64::from(le32(&sb, 0x20));
        let inodes_per_group = le32(&sb, 0x28);
        let inodes_count = u64::from(le32(&sb, 0x00));
        let inode_size = u32::from(le16(&sb, 0x58));
        let incompat = le32(&sb, 0x60);
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let mut blocks_count = u64::from(le32(&sb, 0x04));
        if is64 {
            blocks_count |= u64::from(le32(&sb, 0x150)) << 32;
        }
        let desc_size = if is64 { u64::from(le16(&sb, 0xFE)) } else { 32 };
        if incompat & INCOMPAT_META_BG != 0 {
            return Err("meta_bg group descriptors are not supported".into());
        }
        if blocks_per_group == 0 || blocks_per_group > 8 * block_size {
            return Err(format!(
                "s_blocks_per_group {blocks_per_group} is out of range"
            ));
        }
        if inodes_per_group == 0 || u64::from(inodes_per_group) > 8 * block_size {
            return Err(format!(
                "s_inodes_per_group {inodes_per_group} is out of range"
            ));
        }
        if inode_size < 128 || !inode_size.is_power_of_two() || u64::from(inode_size) > block_size {
            return Err(format!("s_inode_size {inode_size} is out of range"));
        }
        if !(32..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
            return Err(format!("s_desc_size {desc_size} is out of range"));
        }
        if blocks_count <= first_data_block
            || blocks_count
                .checked_mul(block_size)
                .is_none_or(|b| b > image_size)
        {
            return Err(format!(
                "{blocks_count} blocks of {block_size} bytes do not fit an image of {image_size} bytes"
            ));
        }
        let groups = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        if groups > MAX_GROUPS || inodes_count != groups * u64::from(inodes_per_group) {
            return Err(format!(
                "{groups} groups of {inodes_per_group} inodes disagree with s_inodes_count {inodes_count}"
            ));
        }
        // Descriptors follow the superblock's block.
        let desc_at = (first_data_block + 1) * block_size;
        let desc_len = groups * desc_size;
        if desc_at + desc_len > image_size {
            return Err(format!(
                "group descriptors ({desc_len} bytes at {desc_at}) lie past the end of the image"
            ));
        }
        let mut desc = vec![0u8; desc_len as usize];
        read(desc_at, &mut desc).map_err(|e| format!("reading the group descriptors: {e}"))?;
        let table_len = u64::from(inodes_per_group) * u64::from(inode_size);
        let mut tables = Vec::with_capacity(groups as usize);
        for (g, d) in desc.chunks_exact(desc_size as usize).enumerate() {
            let mut block = u64::from(le32(d, 0x08));
            if desc_size >= 64 {
                block |= u64::from(le32(d, 0x28)) << 32;
            }
            let at = block
                .checked_mul(block_size)
                .filter(|&at| {
                    at > desc_at && at.checked_add(table_len).is_some_and(|e| e <= image_size)
                })
                .ok_or_else(|| {
                    format!("group {g}: inode table at block {block} lies outside the image")
                })?;
            tables.push(at);
        }
        let by_offset = by_offset(&tables);
        if let Some(w) = by_offset.windows(2).find(|w| w[0].0 + table_len > w[1].0) {
            return Err(format!(
                "inode tables of groups {} and {} overlap",
                w[0].1, w[1].1
            ));
        }
        Ok(Self {
            inodes_per_group,
            inode_size,
            tables,
            by_offset,
        })
    }

    /// Reads the inode tables of the image served by `image` (blocking: call
    /// it outside the image's runtime, like
    /// [`LazyImage::read_at_blocking`]). Reads the superblock and the group
    /// descriptors, fetching their chunks if they are not cached.
    pub fn read(image: &LazyImage) -> Result<Self> {
        Self::parse(image.size(), |offset, buf| {
            let n = image
                .read_at_blocking(offset, buf)
                .map_err(|e| e.to_string())?;
            if n == buf.len() {
                Ok(())
            } else {
                Err(format!("short read at {offset}"))
            }
        })
        .map_err(|reason| Error::InodeTables { reason })
    }

    /// Tables at the given byte offsets, unchecked (for tests).
    #[cfg(test)]
    pub(super) fn synthetic(inodes_per_group: u32, inode_size: u32, tables: Vec<u64>) -> Self {
        let by_offset = by_offset(&tables);
        Self {
            inodes_per_group,
            inode_size,
            tables,
            by_offset,
        }
    }

    /// Number of block groups.
    pub fn groups(&self) -> usize {
        self.tables.len()
    }

    /// Inodes per group.
    pub fn inodes_per_group(&self) -> u32 {
        self.inodes_per_group
    }

    /// Bytes per inode.
    pub fn inode_size(&self) -> u32 {
        self.inode_size
    }

    /// Byte offset of inode `ino` in the image (`None` for 0 or a number
    /// past the last group).
    pub fn inode_offset(&self, ino: u64) -> Option<u64> {
        let i = ino.checked_sub(1)?;
        let ipg = u64::from(self.inodes_per_group);
        let at = *self.tables.get(usize::try_from(i / ipg).ok()?)?;
        Some(at + (i % ipg) * u64::from(self.inode_size))
    }

    /// The inode numbers stored (wholly or partly) in 4 KiB image block
    /// `block`, ascending; empty when the block is in no inode table.
    pub fn inodes_in_block(&self, block: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let Some(lo) = block.checked_mul(BLOCK_SIZE) else {
            return out;
        };
        let hi = lo.saturating_add(BLOCK_SIZE);
        let ipg = u64::from(self.inodes_per_group);
        let isz = u64::from(self.inode_size);
        let table_len = ipg * isz;
        // The last table starting at or before `lo`, then any starting inside.
        let first = self.by_offset.partition_point(|&(at, _)| at <= lo);
        for &(at, group) in &self.by_offset[first.saturating_sub(1)..] {
            if at >= hi {
                break;
            }
            let start = lo.max(at);
            let end = hi.min(at + table_len);
            if start >= end {
                continue;
            }
            let base = u64::from(group) * ipg + 1;
            let idx: Range<u64> = (start - at) / isz..(end - at).div_ceil(isz);
            out.extend(idx.map(|i| base + i));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::process::Command;

    fn have_e2fsprogs() -> bool {
        let ok = Command::new("mke2fs").arg("-V").output().is_ok()
            && Command::new("debugfs").arg("-V").output().is_ok();
        if !ok {
            assert!(
                std::env::var("LODE_REQUIRE_SERVERS").as_deref() != Ok("1"),
                "mke2fs/debugfs missing"
            );
            eprintln!("skipped: mke2fs or debugfs missing (apt-get install e2fsprogs)");
        }
        ok
    }

    fn parse_file(img: &Path) -> std::result::Result<InodeTables, String> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(img).unwrap();
        let size = f.metadata().unwrap().len();
        InodeTables::parse(size, |off, buf| {
            f.read_exact_at(buf, off).map_err(|e| e.to_string())
        })
    }

    fn parse_bytes(data: &[u8]) -> std::result::Result<InodeTables, String> {
        InodeTables::parse(data.len() as u64, |off, buf| {
            let s = usize::try_from(off).map_err(|e| e.to_string())?;
            let src = data
                .get(s..s + buf.len())
                .ok_or_else(|| "past the end".to_string())?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    /// `debugfs -R 'imap <ino>'`: (block, offset in block) of an inode.
    fn debugfs_imap(img: &Path, ino: u64) -> (u64, u64) {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("imap <{ino}>"))
            .arg(img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // "Inode 12 is part of block group 0\n\tlocated at block 37, offset 0x0b00"
        let line = text
            .lines()
            .find(|l| l.contains("located at block"))
            .unwrap_or_else(|| panic!("imap <{ino}>: {text}"));
        let rest = line.split("located at block ").nth(1).unwrap();
        let (block, off) = rest.split_once(", offset 0x").unwrap();
        (
            block.trim().parse().unwrap(),
            u64::from_str_radix(off.trim(), 16).unwrap(),
        )
    }

    fn mke2fs(dir: &Path, name: &str, size: &str, args: &[&str]) -> std::path::PathBuf {
        let img = dir.join(name);
        let out = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4"])
            .args(args)
            .arg(&img)
            .arg(size)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mke2fs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        img
    }

    #[test]
    fn inode_locations_match_debugfs_and_the_kernel_numbers() {
        if !have_e2fsprogs() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let mut files = BTreeMap::new();
        for i in 0..40 {
            let p = root.join(format!("d{}/f{i:02}", i % 3));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("file {i}\n")).unwrap();
            files.insert(format!("d{}/f{i:02}", i % 3), p);
        }
        let root_s = root.to_str().unwrap();
        // Several groups, 32- and 64-byte descriptors, 128- and 256-byte
        // inodes, 4 KiB and 1 KiB blocks, with and without flex_bg.
        let cases: &[(&str, &[&str])] = &[
            ("a.ext4", &["-b", "4096", "-O", "^64bit", "-d", root_s]),
            (
                "b.ext4",
                &["-b", "4096", "-O", "64bit", "-I", "128", "-d", root_s],
            ),
            (
                "c.ext4",
                &["-b", "4096", "-O", "64bit,^flex_bg", "-N", "9000"],
            ),
            (
                "d.ext4",
                &["-b", "1024", "-O", "^64bit", "-I", "256", "-N", "3000"],
            ),
        ];
        for (name, args) in cases {
            let img = mke2fs(tmp.path(), name, "300M", args);
            let t = parse_file(&img).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(t.groups() > 1, "{name}: {} groups", t.groups());
            let bs = if args.contains(&"1024") { 1024 } else { 4096 };
            let ipg = u64::from(t.inodes_per_group());
            let last = t.groups() as u64 * ipg;
            for ino in [1, 2, 11, 12, 40, ipg, ipg + 1, 2 * ipg + 7, last] {
                let (block, off) = debugfs_imap(&img, ino);
                let at = t.inode_offset(ino).unwrap();
                assert_eq!(at, block * bs + off, "{name}: inode {ino}");
                assert!(
                    t.inodes_in_block(at / BLOCK_SIZE).contains(&ino),
                    "{name}: {ino}"
                );
                assert!(
                    !t.inodes_in_block(at / BLOCK_SIZE + 1_000_000)
                        .contains(&ino)
                );
            }
            assert_eq!(t.inode_offset(0), None);
            assert_eq!(t.inode_offset(last + 1), None);
            // A 4 KiB block holds 4096 / inode_size whole inodes (1 KiB
            // file-system blocks can split a group's table unaligned).
            if bs == 4096 {
                let b = t.inode_offset(13).unwrap() / BLOCK_SIZE;
                assert_eq!(
                    t.inodes_in_block(b).len() as u64,
                    BLOCK_SIZE / u64::from(t.inode_size())
                );
            }
            // A block outside every table (the superblock's) holds none.
            assert!(t.inodes_in_block(0).is_empty());
        }

        // The kernel's inode numbers (st_ino) of files added with -d sit
        // where debugfs says.
        if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/loop-control").exists() {
            eprintln!("skipped: st_ino check needs root and loop devices");
            return;
        }
        let img = tmp.path().join("a.ext4");
        let t = parse_file(&img).unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-o", "loop,ro,noload"])
            .arg(&img)
            .arg(mnt.path())
            .status()
            .unwrap();
        assert!(st.success());
        let mut checked = 0;
        for rel in files.keys() {
            let ino = std::fs::metadata(mnt.path().join(rel)).unwrap().ino();
            let (block, off) = debugfs_imap(&img, ino);
            assert_eq!(t.inode_offset(ino), Some(block * 4096 + off), "{rel}");
            checked += 1;
        }
        let _ = Command::new("umount").arg(mnt.path()).status();
        assert_eq!(checked, 40);
    }

    #[test]
    fn bad_superblocks_and_descriptors_are_errors() {
        if !have_e2fsprogs() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let img = mke2fs(
            tmp.path(),
            "x.ext4",
            "64M",
            &["-b", "4096", "-g", "8192", "-O", "64bit"],
        );
        let good = std::fs::read(&img).unwrap();
        assert!(parse_bytes(&good).is_ok());
        let bad = |at: usize, bytes: &[u8], want: &str| {
            let mut d = good.clone();
            d[at..at + bytes.len()].copy_from_slice(bytes);
            let e = parse_bytes(&d).unwrap_err();
            assert!(e.contains(want), "{e} lacks {want}");
        };
        bad(1024 + 0x38, &[0, 0], "magic");
        bad(1024 + 0x18, &[9, 0, 0, 0], "s_log_block_size");
        bad(1024 + 0x20, &[0, 0, 0, 0], "s_blocks_per_group");
        bad(1024 + 0x28, &[0, 0, 0, 0], "s_inodes_per_group");
        bad(1024 + 0x58, &[100, 0], "s_inode_size");
        bad(1024 + 0xFE, &[48, 0], "s_desc_size");
        bad(1024 + 0x04, &[0, 0, 0, 1], "do not fit");
        bad(1024, &[1, 0, 0, 0], "s_inodes_count"); // s_inodes_count at 0x00
        bad(1024 + 0x60, &[0xd0, 0, 0, 0], "meta_bg");
        // Group 0's inode table moved past the end of the image.
        bad(4096 + 0x08, &[0, 0, 0, 0x7f], "outside the image");
        bad(4096 + 0x28, &[1, 0, 0, 0], "outside the image");
        // Group 1's table moved onto group 0's.
        let t0 = &good[4096 + 8..4096 + 12].to_vec();
        bad(4096 + 64 + 0x08, t0, "overlap");
        assert!(
            parse_bytes(&good[..2000])
                .unwrap_err()
                .contains("too small")
        );
        assert!(
            parse_bytes(&good[..8192])
                .unwrap_err()
                .contains("do not fit")
        );
    }

    proptest::proptest! {
        /// Arbitrary bytes over the superblock and descriptors never panic.
        #[test]
        fn garbage_never_panics(
            sb in proptest::collection::vec(proptest::num::u8::ANY, 1024),
            desc in proptest::collection::vec(proptest::num::u8::ANY, 256),
            keep_magic in proptest::bool::ANY,
        ) {
            let mut d = vec![0u8; 1 << 20];
            d[1024..2048].copy_from_slice(&sb);
            d[4096..4096 + 256].copy_from_slice(&desc);
            if keep_magic {
                d[1024 + 0x38..1024 + 0x3a].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
            }
            if let Ok(t) = parse_bytes(&d) {
                for b in 0..256 {
                    for ino in t.inodes_in_block(b) {
                        proptest::prop_assert!(t.inode_offset(ino).is_some());
                    }
                }
            }
        }
    }
}
