//! A layer's tar stream to normalized entries, with file contents spooled
//! to a temporary file (and read back through [`FileSpool`]).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};

use super::entry::{LayerEntry, Op, ParsedLayer, entry_err, normalize};
use crate::error::LayerError;
use crate::tar::{EntryType, TarError, TarReader};
use crate::tree::{DataExtent, FileData, Metadata};

/// Largest file ext4 with 4 KiB blocks and extents can hold (2^32 blocks).
const MAX_FILE_SIZE: u64 = (1 << 44) - 4096;
/// Longest symlink target Linux accepts.
const MAX_SYMLINK: usize = 4095;
/// Size of the spool's write buffer.
const SPOOL_BUF: usize = 1 << 20;

fn check_components(raw: &[u8], comps: &[Vec<u8>]) -> Result<(), LayerError> {
    for c in comps {
        if c.len() > 255 {
            return Err(entry_err(
                raw,
                format!("name component of {} bytes; ext4 allows 255", c.len()),
            ));
        }
        if c.contains(&0) {
            return Err(entry_err(raw, "name contains a NUL byte"));
        }
    }
    Ok(())
}

fn keep_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name.starts_with(b"trusted.")
        || name.starts_with(b"security.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// Whether a (kept) xattr can live on a node of this kind. The kernel lists
/// but never reads `user.*` xattrs on anything but regular files and
/// directories (ENODATA), nor POSIX ACLs on symlinks (EOPNOTSUPP), and no
/// unpacker can set them there: they are dropped. Hard links take the
/// target's xattrs.
fn keep_xattr_on(op: &Op, name: &[u8]) -> bool {
    match op {
        Op::File(_) | Op::Dir | Op::HardLink(_) => true,
        Op::Symlink(_) => !name.starts_with(b"user.") && !name.starts_with(b"system.posix_acl_"),
        _ => !name.starts_with(b"user."),
    }
}

fn tar_err(e: TarError) -> LayerError {
    match e {
        TarError::Io(e) => LayerError::Io(e),
        TarError::Truncated { offset } => LayerError::Truncated { offset },
        TarError::Malformed { offset, reason } => LayerError::Malformed { offset, reason },
    }
}

/// Parses a layer's tar stream, spooling file contents to `spool`.
pub(crate) fn parse_tar(
    r: &mut dyn Read,
    layer: usize,
    spool: File,
) -> Result<ParsedLayer, LayerError> {
    let layer_u32 =
        u32::try_from(layer).map_err(|_| LayerError::Format("too many layers".into()))?;
    // The channel reader hands out whole chunks: no extra buffer needed.
    let mut tar = TarReader::new(r);
    let mut out = BufWriter::with_capacity(SPOOL_BUF, spool);
    let mut spool_pos = 0u64;
    let mut entries = Vec::new();
    let mut files: Vec<FileData> = Vec::new();
    let mut file_hashes = Vec::new();
    while let Some(e) = tar.next_entry().map_err(tar_err)? {
        let comps = normalize(&e.path);
        check_components(&e.path, &comps)?;
        if let Some(k) = e.xattrs.keys().find(|k| k.contains(&0)) {
            // The xattr interface takes C strings: no unpacker could set it,
            // and stored as is it would list as two names.
            return Err(entry_err(
                &e.path,
                format!(
                    "xattr name {:?} contains a NUL byte",
                    String::from_utf8_lossy(k)
                ),
            ));
        }
        // Id 2^32-1 is "leave unchanged" to chown(2): every unpacker leaves
        // such a file owned by root, and the kernel could not show it
        // anyway (it is INVALID_UID; stat would say 65534).
        let id = |v: u32| if v == u32::MAX { 0 } else { v };
        let meta = Metadata {
            mode: e.mode,
            uid: id(e.uid),
            gid: id(e.gid),
            mtime: e.mtime,
            xattrs: e
                .xattrs
                .iter()
                .filter(|(k, _)| keep_xattr(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let (comps, op) = match comps.last().map(Vec::as_slice) {
            Some(b".wh..wh..opq") => (comps[..comps.len() - 1].to_vec(), Op::Opaque),
            Some(name) if name.starts_with(b".wh..wh.") => continue, // aufs metadata
            Some(name) if name.starts_with(b".wh.") => {
                let target = &name[4..];
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(entry_err(&e.path, "whiteout without a valid name"));
                }
                let mut c = comps[..comps.len() - 1].to_vec();
                c.push(target.to_vec());
                (c, Op::Whiteout)
            }
            _ => {
                let op = match e.kind {
                    EntryType::Directory => Op::Dir,
                    EntryType::Regular => {
                        if e.size > MAX_FILE_SIZE {
                            return Err(entry_err(
                                &e.path,
                                format!("file size {} exceeds ext4's limit", e.size),
                            ));
                        }
                        let mut extents: Vec<DataExtent> = Vec::new();
                        let mut fh = twox_hash::XxHash3_128::new();
                        tar.read_data(&e, &mut |file_offset, bytes| {
                            out.write_all(bytes)?;
                            fh.write(bytes);
                            match extents.last_mut() {
                                Some(x)
                                    if x.file_offset + x.len == file_offset
                                        && x.spool_offset + x.len == spool_pos =>
                                {
                                    x.len += bytes.len() as u64;
                                }
                                _ => extents.push(DataExtent {
                                    file_offset,
                                    len: bytes.len() as u64,
                                    spool_offset: spool_pos,
                                }),
                            }
                            spool_pos += bytes.len() as u64;
                            Ok(())
                        })
                        .map_err(tar_err)?;
                        if extents
                            .last()
                            .is_some_and(|x| x.file_offset + x.len > e.size)
                        {
                            return Err(entry_err(&e.path, "data beyond the file size"));
                        }
                        file_hashes.push(fh.finish_128());
                        files.push(FileData {
                            layer: layer_u32,
                            size: e.size,
                            extents,
                        });
                        Op::File(files.len() - 1)
                    }
                    EntryType::HardLink => {
                        let target = normalize(&e.link);
                        if target.is_empty() {
                            return Err(entry_err(&e.path, "hard link to the root directory"));
                        }
                        check_components(&e.link, &target)?;
                        Op::HardLink(target)
                    }
                    EntryType::Symlink => {
                        if e.link.is_empty() || e.link.len() > MAX_SYMLINK || e.link.contains(&0) {
                            return Err(entry_err(
                                &e.path,
                                format!("invalid symlink target of {} bytes", e.link.len()),
                            ));
                        }
                        Op::Symlink(e.link.clone())
                    }
                    EntryType::CharDevice => Op::Char(e.devmajor, e.devminor),
                    EntryType::BlockDevice => Op::Block(e.devmajor, e.devminor),
                    EntryType::Fifo => Op::Fifo,
                };
                (comps, op)
            }
        };
        let mut meta = meta;
        meta.xattrs.retain(|k, _| keep_xattr_on(&op, k));
        if matches!(op, Op::Symlink(_)) {
            // Linux cannot give a symlink other permissions: every unpacker
            // (containerd, umoci, GNU tar) creates it 0777 whatever the
            // header says.
            meta.mode = 0o777;
        }
        entries.push(LayerEntry {
            raw: e.path,
            comps,
            op,
            meta,
        });
    }
    let spool = out
        .into_inner()
        .map_err(|e| LayerError::Io(e.into_error()))?;
    Ok(ParsedLayer {
        entries,
        files,
        file_hashes,
        spool,
    })
}

/// Spooled file contents of every layer: one anonymous temporary file per
/// layer, deleted when dropped.
#[derive(Debug)]
pub struct FileSpool {
    pub(crate) layers: Vec<File>,
}

impl crate::tree::Spool for FileSpool {
    fn read_at(&self, layer: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.layers
            .get(layer as usize)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no spool for layer {layer}"),
                )
            })?
            .read_exact_at(buf, offset)
    }
}
