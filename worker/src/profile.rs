//! Prefetch profiles: what an image's application read in its first seconds.
//!
//! A [`Profile`] is recorded by a mount (`lode mount --record-profile FILE`):
//! the [`LazyImage`] logs the first access of every chunk and of every 4 KiB
//! block ([`LazyImageOptions::record`](crate::LazyImageOptions::record));
//! when the mount ends, before the ext4 file system is unmounted, a
//! [`BlockMap`] built with the `FIEMAP` ioctl over the mounted tree turns the
//! blocks into files ([`Profile::record`]).
//!
//! Two uses:
//! - **Prefetch**: the chunk part ([`Profile::chunks_only`]: indexes and
//!   times, no paths) is stored beside the manifest; the next mount fetches
//!   those chunks in that order before the application asks
//!   ([`LazyImage::prefetch`] with [`Profile::chunk_indexes`]).
//! - **Layout**: the file part ([`Profile::files_as_ranges`]) tells a
//!   flattener which files (and which of their blocks) to place first.
//!
//! The JSON form (`version` 1):
//! ```json
//! {"version":1,"image":"python-app","manifest_digest":"<64 hex>",
//!  "chunk_size":524288,"image_size":139460608,"window_ms":60000,
//!  "chunks":[{"index":3,"at_ms":12}],
//!  "files":[{"path":"/usr/bin/python3","at_ms":12,"blocks":[[0,3],[10,2]]}],
//!  "unmapped_blocks":123,"kernel_readahead_kb":0}
//! ```
//! `kernel_readahead_kb` is optional (absent: no hint): the kernel readahead
//! a mount of the image should use unless told otherwise. `lode push
//! --layout-profile` stores a profile with `0`, since kernel readahead runs
//! in file order and would fetch the cold copies of a profile-guided layout.
//! `files` are in order of first access; `blocks` are `[first logical 4 KiB
//! block, count]`, sorted and merged. A file read again more than
//! [`BURST_GAP_MS`] after its previous read appears again (a later burst).
//! A read of an ext4 inode-table block ([`InodeTables`]) lists the files
//! whose inodes it holds, those not listed before, with `"blocks": []`:
//! files an application only looked up (`stat`) still appear, and a layout
//! can number their inodes first. (Mounts that record use the ext4 option
//! `inode_readahead_blks=0`, so the kernel reads only the inode-table blocks
//! it needs.) `unmapped_blocks` counts blocks that belong to no file or
//! directory and hold no inode with a path (superblock, group descriptors,
//! bitmaps, unused inodes, extent blocks).
//! Paths that are not UTF-8 are written as arrays of bytes.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use worker::profile::{BlockMap, Profile};
//! use worker::{ChunkTable, LazyImage, LazyImageOptions, MemorySource, TierId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> worker::Result<()> {
//! // A 64 KiB image of holes in chunks of 16 KiB, recording for a minute.
//! let table = ChunkTable { image_size: 65536, chunk_size: 16384, chunks: vec![None; 4] };
//! let source = Arc::new(MemorySource::new(TierId::untrusted("store")));
//! let opts = LazyImageOptions::default().record(Duration::from_secs(60));
//! let image = LazyImage::new(table, source, opts)?;
//! let mut buf = [0u8; 8192];
//! image.read_at(20480, &mut buf).await?; // blocks 5 and 6
//!
//! // Blocks 4..8 hold /app/main.py (on a real mount: BlockMap::from_mounted_tree).
//! let map = BlockMap::from_extents([(&b"/app/main.py"[..], 4, 0, 4)]);
//! let profile = Profile::record("app", &"00".repeat(32), &image, Some(&map));
//! assert_eq!(profile.files[0].path, b"/app/main.py");
//! assert_eq!(profile.files[0].blocks, vec![(1, 2)]);
//! let back = Profile::from_json(&profile.to_json(), "example")?;
//! assert_eq!(back, profile);
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::LazyImage;
use crate::error::{Error, ProfileMismatch, ProfileProblem, Result};
use crate::image::{BLOCK_SIZE, BlockLog, ChunkAccess};

mod inode_table;
pub use inode_table::InodeTables;

/// The profile format version this crate reads and writes.
pub const PROFILE_VERSION: u32 = 1;

/// The largest kernel readahead hint a profile may carry (KiB): 64 MiB,
/// far beyond any useful readahead, so a typo cannot ask for gigabytes.
pub const MAX_KERNEL_READAHEAD_KB: u32 = 65536;

/// A file read again after this long a pause starts a new entry in
/// [`Profile::files`]; reads closer together join the file's entry.
pub const BURST_GAP_MS: u64 = 1000;

/// `(first 4 KiB block, count)` ranges of a file.
pub type BlockRanges = Vec<(u64, u64)>;

/// A recorded prefetch profile. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Format version ([`PROFILE_VERSION`]).
    pub version: u32,
    /// Image name in the store.
    pub image: String,
    /// Hex SHA-256 of the manifest's public part
    /// (`SealedManifest::public_digest`): the profile fits only that manifest.
    pub manifest_digest: String,
    /// Chunk size of the image.
    pub chunk_size: u32,
    /// Image size in bytes.
    pub image_size: u64,
    /// The recording window in milliseconds (0: none).
    pub window_ms: u64,
    /// First access of each chunk, in order (holes are never listed).
    pub chunks: Vec<ChunkAccess>,
    /// Files in order of first access (empty in a stored profile, or when
    /// no ext4 tree was mounted).
    #[serde(default)]
    pub files: Vec<FileAccess>,
    /// Recorded blocks that belong to no file or directory.
    #[serde(default)]
    pub unmapped_blocks: u64,
    /// Kernel readahead (KiB) a mount of this image should use, when the
    /// image wants one: `Some(0)` for a profile-guided layout (`lode push
    /// --layout-profile`), whose kernel readahead would run in file order
    /// into the cold copies. A mount uses it unless told otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_readahead_kb: Option<u32>,
}

/// One burst of reads of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAccess {
    /// Absolute path inside the image (bytes: ext4 names need not be UTF-8).
    #[serde(with = "path_bytes")]
    pub path: Vec<u8>,
    /// Milliseconds after opening when this burst began.
    #[serde(default)]
    pub at_ms: u64,
    /// `(first logical 4 KiB block, count)`, sorted, merged; empty when
    /// only the file's inode was read (in an inode-table block).
    pub blocks: Vec<(u64, u64)>,
}

impl Profile {
    /// Builds the profile of what `image` recorded (see
    /// [`LazyImageOptions::record`](crate::LazyImageOptions::record)); with
    /// `map`, recorded blocks are attributed to files. When `map` knows
    /// inode numbers ([`BlockMap::from_mounted_tree`]), the image's inode
    /// tables are read ([`InodeTables::read`], blocking: call this outside
    /// the image's runtime) and every recorded inode-table block lists the
    /// files of its inodes as entries without blocks; if they cannot be
    /// read, a warning is logged and those blocks count as unmapped.
    pub fn record(
        image_name: &str,
        manifest_digest: &str,
        image: &LazyImage,
        map: Option<&BlockMap>,
    ) -> Self {
        let log = image.block_log();
        let (files, unmapped_blocks) = match (map, &log) {
            (Some(map), Some(log)) => {
                // Inode-table blocks name files only if the walk saw inodes.
                let tables = if map.inodes() > 0 {
                    InodeTables::read(image)
                        .inspect_err(|e| {
                            tracing::warn!(
                                error = %crate::error::Chain(e),
                                "cannot locate the inode tables; the profile lists no files for inodes read"
                            );
                        })
                        .ok()
                } else {
                    None
                };
                map.attribute_with_inodes(log, tables.as_ref())
            }
            (None, Some(log)) => (Vec::new(), log.blocks()),
            _ => (Vec::new(), 0),
        };
        Self {
            version: PROFILE_VERSION,
            image: image_name.to_owned(),
            manifest_digest: manifest_digest.to_owned(),
            chunk_size: image.chunk_size(),
            image_size: image.size(),
            window_ms: image.record_window().map_or(0, |w| w.as_millis() as u64),
            chunks: image.access_log(),
            files,
            unmapped_blocks,
            kernel_readahead_kb: None,
        }
    }

    /// Parses and [validates](Self::validate) a profile; `what` names it in
    /// errors (a file path, `profiles/NAME`).
    pub fn from_json(bytes: &[u8], what: &str) -> Result<Self> {
        let p: Self = serde_json::from_slice(bytes).map_err(|e| Error::Profile {
            what: what.to_owned(),
            problem: ProfileProblem::Json(e.into()),
        })?;
        p.validate().map_err(|problem| Error::Profile {
            what: what.to_owned(),
            problem,
        })?;
        Ok(p)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data to a Vec cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Reads and validates a profile file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("reading profile", path, e))?;
        Self::from_json(&bytes, &path.display().to_string())
    }

    /// Writes the profile (to a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        std::fs::write(&tmp, self.to_json()).map_err(|e| Error::io("writing profile", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming profile to", path, e))
    }

    /// Checks the profile on its own: version, sizes, digest form, chunk
    /// indexes inside the image and each listed once, times in order, file
    /// paths absolute, block ranges non-empty and inside the image, a
    /// kernel readahead hint of at most [`MAX_KERNEL_READAHEAD_KB`].
    pub fn validate(&self) -> std::result::Result<(), ProfileProblem> {
        if self.version != PROFILE_VERSION {
            return Err(ProfileProblem::Version {
                found: self.version,
                supported: PROFILE_VERSION,
            });
        }
        if self.chunk_size == 0 {
            return Err(ProfileProblem::ZeroChunkSize);
        }
        if self.manifest_digest.len() != 64
            || !self
                .manifest_digest
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(ProfileProblem::Digest(self.manifest_digest.clone()));
        }
        let n = self.image_size.div_ceil(u64::from(self.chunk_size));
        let mut seen = HashSet::new();
        let mut last_ms = 0;
        for c in &self.chunks {
            if c.index >= n {
                return Err(ProfileProblem::ChunkOutside {
                    index: c.index,
                    chunks: n,
                });
            }
            if !seen.insert(c.index) {
                return Err(ProfileProblem::ChunkTwice { index: c.index });
            }
            if c.at_ms < last_ms {
                return Err(ProfileProblem::TimeOrder {
                    index: c.index,
                    at_ms: c.at_ms,
                    after_ms: last_ms,
                });
            }
            last_ms = c.at_ms;
        }
        if let Some(kb) = self.kernel_readahead_kb
            && kb > MAX_KERNEL_READAHEAD_KB
        {
            return Err(ProfileProblem::Readahead {
                kb,
                max: MAX_KERNEL_READAHEAD_KB,
            });
        }
        let blocks = self.image_size.div_ceil(BLOCK_SIZE);
        for f in &self.files {
            let shown = || String::from_utf8_lossy(&f.path).into_owned();
            if f.path.first() != Some(&b'/') {
                return Err(ProfileProblem::RelativePath(shown()));
            }
            for &(first, count) in &f.blocks {
                if count == 0 || first.checked_add(count).is_none_or(|end| end > blocks) {
                    return Err(ProfileProblem::BlockRange {
                        path: shown(),
                        first,
                        count,
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks that the profile was recorded on the image whose manifest has
    /// public digest `manifest_digest` (hex), size and chunk size.
    pub fn check_image(
        &self,
        manifest_digest: &str,
        image_size: u64,
        chunk_size: u32,
    ) -> std::result::Result<(), ProfileMismatch> {
        if self.manifest_digest != manifest_digest {
            return Err(ProfileMismatch::Manifest {
                image: self.image.clone(),
                recorded: short(&self.manifest_digest).to_owned(),
                now: short(manifest_digest).to_owned(),
            });
        }
        if self.image_size != image_size || self.chunk_size != chunk_size {
            return Err(ProfileMismatch::Geometry {
                recorded: (self.image_size, self.chunk_size),
                now: (image_size, chunk_size),
            });
        }
        Ok(())
    }

    /// Chunk indexes in order of first access (what to prefetch).
    pub fn chunk_indexes(&self) -> Vec<u64> {
        self.chunks.iter().map(|c| c.index).collect()
    }

    /// The part that is stored beside the manifest: chunk indexes and times
    /// only, no paths.
    pub fn chunks_only(&self) -> Self {
        Self {
            files: Vec::new(),
            unmapped_blocks: 0,
            ..self.clone()
        }
    }

    /// The file part as `(path, [(first 4 KiB block, count)])`, bursts of one
    /// file merged and kept at the file's first position: the input of a
    /// hot-file layout. Files listed only for their inodes keep their place
    /// with no ranges (a layout numbers their inodes early).
    pub fn files_as_ranges(&self) -> Vec<(Vec<u8>, BlockRanges)> {
        let mut order: Vec<(Vec<u8>, BlockRanges)> = Vec::new();
        let mut at: HashMap<&[u8], usize> = HashMap::new();
        for f in &self.files {
            match at.get(f.path.as_slice()) {
                Some(&i) => order[i].1.extend(&f.blocks),
                None => {
                    at.insert(&f.path, order.len());
                    order.push((f.path.clone(), f.blocks.clone()));
                }
            }
        }
        for (_, ranges) in &mut order {
            *ranges = merge_ranges(std::mem::take(ranges));
        }
        order
    }
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

/// Sorts `(first, count)` ranges and merges overlapping or adjacent ones.
fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (first, count) in ranges {
        match out.last_mut() {
            Some((f, c)) if *f + *c >= first => *c = (*c).max(first + count - *f),
            _ => out.push((first, count)),
        }
    }
    out
}

/// Where the 4 KiB blocks of an image belong: physical block →
/// (file, logical block), from the extents of every regular file and
/// directory of the mounted file system.
#[derive(Debug, Clone, Default)]
pub struct BlockMap {
    /// Sorted by `phys`, non-overlapping.
    extents: Vec<Extent>,
    paths: Vec<Vec<u8>>,
    /// Inode number → index in `paths` (the first path found).
    inodes: HashMap<u64, u32>,
    /// Files whose extents could not be read (skipped).
    pub unreadable: u64,
}

#[derive(Debug, Clone, Copy)]
struct Extent {
    phys: u64,
    len: u64,
    file: u32,
    logical: u64,
}

impl BlockMap {
    /// A map from explicit extents `(path, physical block, logical block,
    /// count)`, in 4 KiB blocks (for tests and other file systems).
    pub fn from_extents<'a>(extents: impl IntoIterator<Item = (&'a [u8], u64, u64, u64)>) -> Self {
        let mut map = Self::default();
        let mut ids: HashMap<Vec<u8>, u32> = HashMap::new();
        for (path, phys, logical, len) in extents {
            let file = *ids.entry(path.to_vec()).or_insert_with(|| {
                map.paths.push(path.to_vec());
                (map.paths.len() - 1) as u32
            });
            map.push(file, phys, logical, len);
        }
        map.finish();
        map
    }

    /// Names inodes: `(inode number, path)`, e.g. `st_ino` of every path
    /// of a mounted tree. An inode keeps the first path it is given.
    #[must_use]
    pub fn with_inodes<'a>(mut self, inodes: impl IntoIterator<Item = (u64, &'a [u8])>) -> Self {
        let mut ids: HashMap<Vec<u8>, u32> = self
            .paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        for (ino, path) in inodes {
            if self.inodes.contains_key(&ino) {
                continue;
            }
            let id = *ids.entry(path.to_vec()).or_insert_with(|| {
                self.paths.push(path.to_vec());
                (self.paths.len() - 1) as u32
            });
            self.inodes.insert(ino, id);
        }
        self
    }

    /// The path id of inode `ino`, adding `path` for it if it has none.
    fn name_inode(&mut self, ino: u64, path: &[u8]) -> u32 {
        if let Some(&id) = self.inodes.get(&ino) {
            return id;
        }
        let id = self.paths.len() as u32;
        self.paths.push(path.to_vec());
        self.inodes.insert(ino, id);
        id
    }

    fn push(&mut self, file: u32, phys: u64, logical: u64, len: u64) {
        if len > 0 {
            self.extents.push(Extent {
                phys,
                len,
                file,
                logical,
            });
        }
    }

    fn finish(&mut self) {
        self.extents.sort_by_key(|e| e.phys);
        // Overlaps cannot happen on ext4; keep the first claim if they do.
        let mut out: Vec<Extent> = Vec::with_capacity(self.extents.len());
        for mut e in std::mem::take(&mut self.extents) {
            if let Some(prev) = out.last() {
                let end = prev.phys + prev.len;
                if e.phys < end {
                    let cut = (end - e.phys).min(e.len);
                    e.phys += cut;
                    e.logical += cut;
                    e.len -= cut;
                    if e.len == 0 {
                        continue;
                    }
                }
            }
            out.push(e);
        }
        self.extents = out;
    }

    /// Number of paths known: files and directories mapped, and other
    /// named inodes (symbolic links, devices).
    pub fn files(&self) -> usize {
        self.paths.len()
    }

    /// Number of inodes named (see [`with_inodes`](Self::with_inodes)).
    pub fn inodes(&self) -> usize {
        self.inodes.len()
    }

    /// The path of inode `ino`, if it was named.
    pub fn inode_path(&self, ino: u64) -> Option<&[u8]> {
        self.inodes
            .get(&ino)
            .map(|&i| self.paths[i as usize].as_slice())
    }

    /// Number of extents.
    pub fn extents(&self) -> usize {
        self.extents.len()
    }

    /// The file and logical block of physical block `block`.
    pub fn lookup(&self, block: u64) -> Option<(&[u8], u64)> {
        let e = self.extent_at(block)?;
        Some((&self.paths[e.file as usize], e.logical + (block - e.phys)))
    }

    fn extent_at(&self, block: u64) -> Option<&Extent> {
        let i = self.extents.partition_point(|e| e.phys <= block);
        let e = self.extents.get(i.checked_sub(1)?)?;
        (block < e.phys + e.len).then_some(e)
    }

    /// Attributes recorded blocks to files: file bursts in order of first
    /// access, and the number of blocks that belong to no file.
    pub fn attribute(&self, log: &BlockLog) -> (Vec<FileAccess>, u64) {
        self.attribute_with_inodes(log, None)
    }

    /// [`attribute`](Self::attribute), and with `tables`, a recorded block
    /// of an inode table lists each of its inodes that has a path (see
    /// [`with_inodes`](Self::with_inodes)) and was not listed before as an
    /// entry without blocks, at the time of the read, in inode order; a data
    /// read of that file within [`BURST_GAP_MS`] joins the entry. An
    /// inode-table block counts as unmapped only if none of its inodes has
    /// a path.
    pub fn attribute_with_inodes(
        &self,
        log: &BlockLog,
        tables: Option<&InodeTables>,
    ) -> (Vec<FileAccess>, u64) {
        let mut entries: Vec<(u32, u64, BlockRanges)> = Vec::new();
        // file -> (entry index, time of its latest block)
        let mut open: HashMap<u32, (usize, u64)> = HashMap::new();
        // Files with an entry so far.
        let mut listed: HashSet<u32> = HashSet::new();
        let mut unmapped = 0;
        for run in &log.runs {
            let end = run.block + run.count;
            let mut b = run.block;
            while b < end {
                let i = self.extents.partition_point(|e| e.phys <= b);
                let hit = i
                    .checked_sub(1)
                    .map(|j| &self.extents[j])
                    .filter(|e| b < e.phys + e.len);
                match hit {
                    Some(e) => {
                        let n = (e.phys + e.len).min(end) - b;
                        let logical = e.logical + (b - e.phys);
                        let idx = match open.get(&e.file) {
                            Some(&(idx, last))
                                if run.at_ms.saturating_sub(last) <= BURST_GAP_MS =>
                            {
                                idx
                            }
                            _ => {
                                listed.insert(e.file);
                                entries.push((e.file, run.at_ms, Vec::new()));
                                entries.len() - 1
                            }
                        };
                        open.insert(e.file, (idx, run.at_ms));
                        let ranges = &mut entries[idx].2;
                        match ranges.last_mut() {
                            Some((f, c)) if *f + *c == logical => *c += n,
                            _ => ranges.push((logical, n)),
                        }
                        b += n;
                    }
                    None => {
                        let next = self.extents.get(i).map_or(end, |e| e.phys.min(end));
                        let Some(tables) = tables.filter(|_| !self.inodes.is_empty()) else {
                            unmapped += next - b;
                            b = next;
                            continue;
                        };
                        for block in b..next {
                            let mut named = false;
                            for ino in tables.inodes_in_block(block) {
                                let Some(&file) = self.inodes.get(&ino) else {
                                    continue;
                                };
                                named = true;
                                if listed.insert(file) {
                                    open.insert(file, (entries.len(), run.at_ms));
                                    entries.push((file, run.at_ms, Vec::new()));
                                }
                            }
                            if !named {
                                unmapped += 1;
                            }
                        }
                        b = next;
                    }
                }
            }
        }
        let files = entries
            .into_iter()
            .map(|(file, at_ms, ranges)| FileAccess {
                path: self.paths[file as usize].clone(),
                at_ms,
                blocks: merge_ranges(ranges),
            })
            .collect();
        (files, unmapped)
    }
}

#[cfg(target_os = "linux")]
mod fiemap {
    //! The `FS_IOC_FIEMAP` ioctl and the walk of a mounted tree.

    use std::collections::HashSet;
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    use std::path::Path;

    use super::{BLOCK_SIZE, BlockMap};
    use crate::error::{Error, Result};

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct FiemapExtent {
        fe_logical: u64,
        fe_physical: u64,
        fe_length: u64,
        fe_reserved64: [u64; 2],
        fe_flags: u32,
        fe_reserved: [u32; 3],
    }

    const EXTENTS: usize = 128;

    #[repr(C)]
    struct Fiemap {
        fm_start: u64,
        fm_length: u64,
        fm_flags: u32,
        fm_mapped_extents: u32,
        fm_extent_count: u32,
        fm_reserved: u32,
        fm_extents: [FiemapExtent; EXTENTS],
    }

    /// `_IOWR('f', 11, struct fiemap)` (the header is 32 bytes).
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_EXTENT_LAST: u32 = 0x1;
    /// Unknown location, delayed allocation, encoded, not block aligned,
    /// inline in the inode: no image blocks to attribute.
    const FIEMAP_EXTENT_NO_BLOCKS: u32 = 0x2 | 0x4 | 0x8 | 0x100 | 0x200;

    /// Calls `f(physical byte offset, logical byte offset, length)` for each
    /// extent of `file` that has blocks of its own.
    fn extents(file: &File, mut f: impl FnMut(u64, u64, u64)) -> std::io::Result<()> {
        let mut start = 0u64;
        loop {
            let mut fm = Fiemap {
                fm_start: start,
                fm_length: u64::MAX - start,
                fm_flags: 0,
                fm_mapped_extents: 0,
                fm_extent_count: EXTENTS as u32,
                fm_reserved: 0,
                fm_extents: [FiemapExtent::default(); EXTENTS],
            };
            // SAFETY: `fm` is a valid, writable `struct fiemap` followed by
            // room for `fm_extent_count` extents, as the ioctl requires.
            let rc = unsafe {
                libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, &mut fm as *mut Fiemap)
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = (fm.fm_mapped_extents as usize).min(EXTENTS);
            if n == 0 {
                return Ok(());
            }
            for e in &fm.fm_extents[..n] {
                if e.fe_flags & FIEMAP_EXTENT_NO_BLOCKS == 0 {
                    f(e.fe_physical, e.fe_logical, e.fe_length);
                }
                if e.fe_flags & FIEMAP_EXTENT_LAST != 0 {
                    return Ok(());
                }
            }
            let last = &fm.fm_extents[n - 1];
            let next = last.fe_logical.saturating_add(last.fe_length);
            if next <= start {
                return Ok(());
            }
            start = next;
        }
    }

    impl BlockMap {
        /// Maps every regular file and directory under `root` (a mounted
        /// file system, typically a lode ext4 mount) with `FIEMAP`. Does not
        /// follow symbolic links and does not descend into other file
        /// systems mounted below `root`; a hard-linked file is mapped once,
        /// under the first path found (names are walked in byte order).
        /// Physical offsets are those of the block device under `root`,
        /// which for a lode mount are image offsets. Files that cannot be
        /// opened or mapped are skipped and counted in
        /// [`unreadable`](Self::unreadable). Every path's inode number
        /// (`st_ino`, symbolic links and devices included) is named, under
        /// the first path found (see [`BlockMap::with_inodes`]).
        pub fn from_mounted_tree(root: &Path) -> Result<Self> {
            let meta = std::fs::metadata(root).map_err(|e| Error::io("reading", root, e))?;
            let dev = meta.dev();
            let mut map = Self::default();
            let mut seen = HashSet::new();
            map.add(root, b"/", &mut seen, (meta.dev(), meta.ino()));
            // Pre-order, names in byte order: (directory path, its path in
            // the image, its entries still to visit, reversed).
            let mut stack = vec![(root.to_path_buf(), b"/".to_vec(), map.list(root))];
            while let Some((_, rel, entries)) = stack.last_mut() {
                let Some(entry) = entries.pop() else {
                    stack.pop();
                    continue;
                };
                let mut child = rel.clone();
                if child.len() > 1 {
                    child.push(b'/');
                }
                child.extend_from_slice(entry.file_name().as_bytes());
                let path = entry.path();
                let Ok(m) = std::fs::symlink_metadata(&path) else {
                    map.unreadable += 1;
                    continue;
                };
                if m.dev() != dev {
                    continue;
                }
                let ft = m.file_type();
                if ft.is_dir() {
                    map.add(&path, &child, &mut seen, (m.dev(), m.ino()));
                    let entries = map.list(&path);
                    stack.push((path, child, entries));
                } else if ft.is_file() {
                    map.add(&path, &child, &mut seen, (m.dev(), m.ino()));
                } else {
                    // Symbolic links, devices: an inode, no blocks to map.
                    map.name_inode(m.ino(), &child);
                }
            }
            map.finish();
            Ok(map)
        }

        /// Entries of `dir`, sorted by name, reversed (popped in order).
        fn list(&mut self, dir: &Path) -> Vec<std::fs::DirEntry> {
            match std::fs::read_dir(dir) {
                Ok(rd) => {
                    let mut v: Vec<_> = rd.filter_map(|e| e.ok()).collect();
                    v.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
                    v
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot list directory");
                    self.unreadable += 1;
                    Vec::new()
                }
            }
        }

        fn add(&mut self, path: &Path, rel: &[u8], seen: &mut HashSet<(u64, u64)>, id: (u64, u64)) {
            if !seen.insert(id) {
                return;
            }
            let file_id = self.name_inode(id.1, rel);
            let file = std::fs::File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME | libc::O_NONBLOCK)
                .open(path)
                .or_else(|_| {
                    // O_NOATIME needs ownership on some file systems.
                    std::fs::File::options()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                        .open(path)
                });
            let file = match file {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open for FIEMAP");
                    self.unreadable += 1;
                    return;
                }
            };
            let mut found = Vec::new();
            let r = extents(&file, |phys, logical, len| found.push((phys, logical, len)));
            if let Err(e) = r {
                tracing::warn!(path = %path.display(), error = %e, "FIEMAP failed");
                self.unreadable += 1;
                return;
            }
            for (phys, logical, len) in found {
                let first = phys / BLOCK_SIZE;
                let end = (phys + len).div_ceil(BLOCK_SIZE);
                self.push(file_id, first, logical / BLOCK_SIZE, end - first);
            }
        }
    }
}

/// Serde for paths as bytes: a JSON string when UTF-8, else an array of bytes.
mod path_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(path: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(path) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_seq(path),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Form::deserialize(d)? {
            Form::Text(t) => t.into_bytes(),
            Form::Bytes(b) => b,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::BlockRun;

    fn digest() -> String {
        "ab".repeat(32)
    }

    fn run(block: u64, count: u64, at_ms: u64) -> BlockRun {
        BlockRun {
            block,
            count,
            at_ms,
        }
    }

    fn sample() -> Profile {
        Profile {
            version: 1,
            image: "app".into(),
            manifest_digest: digest(),
            chunk_size: 8192,
            image_size: 10 * 8192,
            window_ms: 60_000,
            chunks: vec![
                ChunkAccess { index: 3, at_ms: 1 },
                ChunkAccess { index: 0, at_ms: 5 },
            ],
            files: vec![FileAccess {
                path: b"/bin/sh".to_vec(),
                at_ms: 1,
                blocks: vec![(0, 2)],
            }],
            unmapped_blocks: 4,
            kernel_readahead_kb: None,
        }
    }

    #[test]
    fn attribute_maps_blocks_to_files_in_order_with_bursts() {
        // /a: logical 0..4 at phys 10..14, logical 4..6 at phys 20..22.
        // /b: logical 0..3 at phys 14..17. Everything else is metadata.
        let map = BlockMap::from_extents([
            (&b"/a"[..], 10, 0, 4),
            (&b"/a"[..], 20, 4, 2),
            (&b"/b"[..], 14, 0, 3),
        ]);
        assert_eq!((map.files(), map.extents()), (2, 3));
        assert_eq!(map.lookup(21), Some((&b"/a"[..], 5)));
        assert_eq!(map.lookup(13), Some((&b"/a"[..], 3)));
        assert_eq!(map.lookup(17), None);
        let log = BlockLog {
            window_ms: 0,
            runs: vec![
                run(0, 1, 0),     // superblock: unmapped
                run(12, 4, 3),    // /a 2..4, /b 0..2
                run(10, 1, 4),    // /a 0 (same burst)
                run(21, 1, 900),  // /a 5: within BURST_GAP_MS of 4 ms
                run(16, 3, 950),  // /b 2, then 17..19 unmapped
                run(20, 1, 5000), // /a 4: a later burst
            ],
            truncated: false,
        };
        let (files, unmapped) = map.attribute(&log);
        assert_eq!(unmapped, 1 + 2);
        assert_eq!(
            entries(&files),
            vec![
                (&b"/a"[..], 3, vec![(0, 1), (2, 2), (5, 1)]),
                (&b"/b"[..], 3, vec![(0, 3)]),
                (&b"/a"[..], 5000, vec![(4, 1)]),
            ]
        );
        let p = Profile { files, ..sample() };
        assert_eq!(
            p.files_as_ranges(),
            vec![
                (b"/a".to_vec(), vec![(0, 1), (2, 4)]),
                (b"/b".to_vec(), vec![(0, 3)])
            ]
        );
    }

    /// (path, first access, blocks) of each profile entry.
    fn entries(files: &[FileAccess]) -> Vec<(&[u8], u64, BlockRanges)> {
        files
            .iter()
            .map(|f| (f.path.as_slice(), f.at_ms, f.blocks.clone()))
            .collect()
    }

    #[test]
    fn inode_table_reads_list_named_inodes_without_blocks() {
        // /a: data at phys 100..104. Inodes: 64 per group, 256 bytes, group
        // 0's table at block 10 (inodes 1..=16), 11 (17..=32), 12, 13;
        // group 1's at block 20.
        let map = BlockMap::from_extents([(&b"/a"[..], 100, 0, 4)]).with_inodes([
            (12, &b"/a"[..]),
            (13, &b"/b"[..]),
            (14, &b"/c"[..]),
            (30, &b"/d"[..]),
            (66, &b"/e"[..]),
            (67, &b"/a-link"[..]),
            (13, &b"/b-hardlink"[..]),
        ]);
        assert_eq!((map.files(), map.inodes()), (6, 6));
        assert_eq!(map.inode_path(13), Some(&b"/b"[..]));
        let tables = InodeTables::synthetic(64, 256, vec![10 * BLOCK_SIZE, 20 * BLOCK_SIZE]);
        assert_eq!(tables.inodes_in_block(11), (17..=32).collect::<Vec<_>>());
        assert_eq!(tables.inodes_in_block(20), (65..=80).collect::<Vec<_>>());
        assert!(tables.inodes_in_block(14).is_empty());
        let log = BlockLog {
            window_ms: 0,
            runs: vec![
                run(0, 1, 0),      // superblock: unmapped
                run(10, 1, 5),     // inodes of /a, /b, /c
                run(100, 2, 6),    // /a data joins its entry
                run(12, 1, 7),     // inode block without named inodes: unmapped
                run(11, 1, 3000),  // /d
                run(102, 1, 5000), // /a again: a later burst
                run(20, 1, 5001),  // /e, /a-link (never a second /a entry)
                run(10, 1, 6000),  // again (cannot happen): nothing new
            ],
            truncated: false,
        };
        let (files, unmapped) = map.attribute_with_inodes(&log, Some(&tables));
        assert_eq!(
            entries(&files),
            vec![
                (&b"/a"[..], 5, vec![(0, 2)]),
                (&b"/b"[..], 5, vec![]),
                (&b"/c"[..], 5, vec![]),
                (&b"/d"[..], 3000, vec![]),
                (&b"/a"[..], 5000, vec![(2, 1)]),
                (&b"/e"[..], 5001, vec![]),
                (&b"/a-link"[..], 5001, vec![]),
            ]
        );
        assert_eq!(unmapped, 2);
        // Without tables, inode-table blocks are unmapped and only data counts.
        let (plain, unmapped) = map.attribute(&log);
        assert_eq!(unmapped, 6);
        assert!(plain.iter().all(|f| f.path == b"/a"));
        // Block-less entries survive JSON and keep their place in the layout input.
        let p = Profile { files, ..sample() };
        assert_eq!(Profile::from_json(&p.to_json(), "p").unwrap(), p);
        assert_eq!(
            p.files_as_ranges(),
            vec![
                (b"/a".to_vec(), vec![(0, 3)]),
                (b"/b".to_vec(), vec![]),
                (b"/c".to_vec(), vec![]),
                (b"/d".to_vec(), vec![]),
                (b"/e".to_vec(), vec![]),
                (b"/a-link".to_vec(), vec![]),
            ]
        );
    }

    #[test]
    fn json_round_trip_validation_and_image_check() {
        let p = sample();
        let json = p.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"path\": \"/bin/sh\""), "{text}");
        assert!(
            text.contains("\"blocks\": [\n        [\n          0,"),
            "{text}"
        );
        assert_eq!(Profile::from_json(&json, "x").unwrap(), p);
        // Non-UTF-8 paths survive as byte arrays.
        let mut q = p.clone();
        q.files[0].path = b"/bad\xff".to_vec();
        assert_eq!(Profile::from_json(&q.to_json(), "q").unwrap(), q);

        let stored = p.chunks_only();
        assert!(stored.files.is_empty() && stored.unmapped_blocks == 0);
        assert!(
            !String::from_utf8(stored.to_json())
                .unwrap()
                .contains("/bin/sh")
        );
        assert_eq!(stored.chunk_indexes(), vec![3, 0]);

        let bad = |f: &dyn Fn(&mut Profile), want: &str| {
            let mut b = sample();
            f(&mut b);
            let e = Profile::from_json(&b.to_json(), "f.json")
                .unwrap_err()
                .to_string();
            assert!(e.contains("f.json") && e.contains(want), "{e} lacks {want}");
        };
        bad(&|p| p.version = 2, "version 2");
        bad(&|p| p.chunk_size = 0, "chunk_size");
        bad(&|p| p.manifest_digest = "AB".repeat(32), "manifest_digest");
        bad(&|p| p.chunks[0].index = 10, "outside the image");
        bad(&|p| p.chunks[1].index = 3, "twice");
        bad(&|p| p.chunks[1].at_ms = 0, "comes after");
        bad(&|p| p.files[0].path = b"bin/sh".to_vec(), "not absolute");
        bad(&|p| p.files[0].blocks = vec![(0, 0)], "block range");
        bad(&|p| p.files[0].blocks = vec![(19, 2)], "block range");
        bad(
            &|p| p.kernel_readahead_kb = Some(MAX_KERNEL_READAHEAD_KB + 1),
            "kernel_readahead_kb",
        );
        let e = Profile::from_json(b"{\"version\":1}", "g").unwrap_err();
        assert!(e.to_string().contains("not a valid profile"), "{e}");

        assert!(p.check_image(&digest(), 10 * 8192, 8192).is_ok());
        let e = p
            .check_image(&"cd".repeat(32), 10 * 8192, 8192)
            .unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("abababababab") && e.contains("cdcdcdcdcdcd"),
            "{e}"
        );
        assert!(p.check_image(&digest(), 8192, 8192).is_err());
    }

    #[test]
    fn kernel_readahead_hint_is_optional_and_kept() {
        // Absent: no hint, and not written back (older readers see version 1 as before).
        let p = sample();
        assert_eq!(p.kernel_readahead_kb, None);
        assert!(
            !String::from_utf8(p.to_json())
                .unwrap()
                .contains("kernel_readahead_kb")
        );
        // Present: survives JSON and the stored chunk part.
        let q = Profile {
            kernel_readahead_kb: Some(0),
            ..sample()
        };
        let text = String::from_utf8(q.to_json()).unwrap();
        assert!(text.contains("\"kernel_readahead_kb\": 0"), "{text}");
        assert!(text.contains("\"version\": 1"), "{text}");
        let back = Profile::from_json(&q.to_json(), "q").unwrap();
        assert_eq!(back.kernel_readahead_kb, Some(0));
        assert_eq!(back.chunks_only().kernel_readahead_kb, Some(0));
        let r = Profile {
            kernel_readahead_kb: Some(MAX_KERNEL_READAHEAD_KB),
            ..sample()
        };
        assert!(r.validate().is_ok());
    }

    proptest::proptest! {
        /// Every recorded block is attributed exactly once: to the file and
        /// logical block `lookup` gives, or to the unmapped count.
        #[test]
        fn attribution_accounts_for_every_block(
            lens in proptest::collection::vec((0u64..6, 1u64..8), 1..12),
            reads in proptest::collection::vec((0u64..120, 1u64..10, 0u64..3000), 0..20),
        ) {
            // Files laid out with gaps: file i at phys `at`, logical 0.. (two extents).
            let mut extents = Vec::new();
            let names: Vec<Vec<u8>> = (0..lens.len()).map(|i| format!("/f{i}").into_bytes()).collect();
            let mut at = 0;
            for (i, &(gap, len)) in lens.iter().enumerate() {
                at += gap;
                extents.push((names[i].as_slice(), at, 0, len));
                extents.push((names[i].as_slice(), at + len + 1, len, 1));
                at += len + 2;
            }
            let map = BlockMap::from_extents(extents);
            // Runs of first accesses: blocks appear once, times never go back.
            let mut seen = HashSet::new();
            let mut runs = Vec::new();
            let mut t = 0;
            for (start, n, dt) in reads {
                t += dt;
                for b in start..start + n {
                    if seen.insert(b) {
                        runs.push(run(b, 1, t));
                    }
                }
            }
            let log = BlockLog { window_ms: 0, runs, truncated: false };
            let (files, unmapped) = map.attribute(&log);
            let mut want: HashMap<Vec<u8>, HashSet<u64>> = HashMap::new();
            let mut want_unmapped = 0;
            for b in &seen {
                match map.lookup(*b) {
                    Some((p, l)) => { want.entry(p.to_vec()).or_default().insert(l); }
                    None => want_unmapped += 1,
                }
            }
            proptest::prop_assert_eq!(unmapped, want_unmapped);
            let mut got: HashMap<Vec<u8>, HashSet<u64>> = HashMap::new();
            for f in &files {
                proptest::prop_assert!(f.blocks.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0), "sorted, merged");
                for &(first, count) in &f.blocks {
                    for l in first..first + count {
                        proptest::prop_assert!(got.entry(f.path.clone()).or_default().insert(l), "block listed twice");
                    }
                }
            }
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert!(files.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        }
    }

    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        sample().save(&path).unwrap();
        assert_eq!(Profile::load(&path).unwrap(), sample());
        let e = Profile::load(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
