//! The FUSE file system: one directory holding one read-only regular file.

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::task::{Context, Waker};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEntry, ReplyOpen, Request,
};

use crate::LazyImage;

const FILE_INO: INodeNo = INodeNo(2);
/// The image never changes while mounted: let the kernel cache attributes long.
const TTL: Duration = Duration::from_secs(3600);
/// Largest read request we ask the kernel for (two 512 KiB chunks).
const MAX_REQUEST: u32 = 1 << 20;

pub(crate) struct ImageFs {
    image: LazyImage,
    /// Asked of the kernel at FUSE_INIT (seconds; 0: none).
    request_timeout: u16,
    name: OsString,
    root: FileAttr,
    file: FileAttr,
}

impl ImageFs {
    /// The file system of `image` as the file `name`; the kernel is asked
    /// to abort the connection when a request waits `request_timeout`
    /// (whole seconds, at most 65535; `None` or zero: never).
    pub(crate) fn new(image: LazyImage, name: &str, request_timeout: Option<Duration>) -> Self {
        let now = SystemTime::now();
        let attr = |ino, kind, perm, size, nlink| FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: image.chunk_size().max(4096),
            flags: 0,
        };
        Self {
            // Root only: the file is the whole decrypted image. Other users
            // read the image's files through the kernel's ext4 on the loop
            // device, which applies the image's own permissions.
            root: attr(INodeNo::ROOT, FileType::Directory, 0o500, 0, 2),
            file: attr(FILE_INO, FileType::RegularFile, 0o400, image.size(), 1),
            name: name.into(),
            request_timeout: request_timeout
                .map_or(0, |t| u16::try_from(t.as_secs()).unwrap_or(u16::MAX)),
            image,
        }
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Big requests (up to 1 MiB) and deep readahead suit 512 KiB chunks;
        // the kernel caps what it cannot do.
        if let Err(max) = config.set_max_readahead(MAX_REQUEST) {
            let _ = config.set_max_readahead(max);
        }
        // max_write also sets max_pages, which bounds read requests.
        let _ = config.set_max_write(MAX_REQUEST);
        // Let many readahead requests be in flight at once (the default is 12).
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        if self.request_timeout > 0 {
            match config.set_request_timeout(self.request_timeout) {
                Ok(()) => tracing::debug!(
                    seconds = self.request_timeout,
                    "FUSE request timeout set: a request unanswered that long aborts the connection"
                ),
                Err(_) => tracing::warn!(
                    seconds = self.request_timeout,
                    "the kernel has no FUSE request timeout (Linux >= 6.14): readers wait for a hung daemon"
                ),
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == self.name {
            reply.entry(&TTL, &self.file, Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino {
            INodeNo::ROOT => reply.attr(&TTL, &self.root),
            FILE_INO => reply.attr(&TTL, &self.file),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // Page cache on and kept across opens: the image is immutable.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        let image = self.image.clone();
        let mut read = Box::pin(async move {
            let mut buf = vec![0u8; size as usize];
            match image.read_at(offset, &mut buf).await {
                Ok(n) => reply.data(&buf[..n]),
                // The error (naming the chunk) was logged by read_at.
                Err(_) => reply.error(Errno::EIO),
            }
        });
        // Most reads hit chunks already in memory and finish on the first
        // poll: answer them right here, which saves the hop to a runtime
        // thread (about half of a small read's cost). A read that waits for
        // a fetch goes on in the runtime, so reads still run concurrently
        // and this thread goes straight back to the kernel.
        let rt = self.image.runtime();
        let _in_runtime = rt.enter();
        let mut cx = Context::from_waker(Waker::noop());
        if read.as_mut().poll(&mut cx).is_pending() {
            rt.spawn(read);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, OsStr::new(".")),
            (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
            (FILE_INO, FileType::RegularFile, self.name.as_os_str()),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
