//! Prefetch profiles on real file systems: the FIEMAP block map of a
//! loop-mounted ext4 (from `mke2fs -d`) checked byte for byte against the
//! image, and a recording lazy mount whose profile names the files read.
//!
//! Needs root, loop devices, `mke2fs` and `mount` (and `/dev/fuse` for the
//! lazy mount); skipped otherwise unless `LODE_REQUIRE_SERVERS=1`.

#![cfg(feature = "fuse")]

mod common;

use common::{CHUNK, build_ext4_with, runtime, sealed_source, skip};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use worker::profile::{BlockMap, Profile};
use worker::{BLOCK_SIZE, LazyImage, LazyImageOptions, MountOptions, ProfileTarget};

fn unavailable(need_fuse: bool) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("not root");
    }
    if need_fuse && !Path::new("/dev/fuse").exists() {
        return skip("/dev/fuse missing");
    }
    if !Path::new("/dev/loop-control").exists() {
        return skip("/dev/loop-control missing");
    }
    if Command::new("mke2fs").arg("-V").output().is_err() {
        return skip("mke2fs missing (apt-get install e2fsprogs)");
    }
    false
}

fn test_files() -> BTreeMap<String, Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut random = |n: usize| (0..n).map(|_| rng.u8(..)).collect::<Vec<u8>>();
    let mut files = BTreeMap::new();
    files.insert("small.txt".into(), b"hello from lode\n".to_vec());
    files.insert("bin/odd".into(), random(700_001));
    files.insert("data/late".into(), random(1_500_000));
    files.insert("sub/inner".into(), random(9000));
    for i in 0..30 {
        files.insert(format!("many/f{i:02}"), random(10_000 + i * 5000));
    }
    files
}

/// The test image: `files`, plus a symlink and a hard link.
fn build_ext4(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    build_ext4_with(dir, files, |root| {
        std::os::unix::fs::symlink("bin/odd", root.join("link-to-odd")).unwrap();
        std::fs::hard_link(root.join("bin/odd"), root.join("zz-hardlink")).unwrap();
    })
}

/// Unmounts (lazily) on drop.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount(args: &[&str], target: &Path) -> Mounted {
    let st = Command::new("mount")
        .args(args)
        .arg(target)
        .status()
        .expect("mount");
    assert!(st.success(), "mount {args:?} {}", target.display());
    Mounted(target.to_path_buf())
}

#[test]
fn fiemap_map_matches_the_image_bytes() {
    if unavailable(false) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = test_files();
    let data = build_ext4(tmp.path(), &files);
    let img = tmp.path().join("fs.ext4");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _ext4 = mount(&["-o", "ro,loop", img.to_str().unwrap()], &mnt);
    // Another file system mounted inside: never crossed.
    let _tmpfs = mount(&["-t", "tmpfs", "tmpfs"], &mnt.join("sub"));
    std::fs::write(mnt.join("sub/on-tmpfs"), b"not in the image").unwrap();

    let map = BlockMap::from_mounted_tree(&mnt).unwrap();
    assert_eq!(map.unreadable, 0);
    // Every block the map attributes holds that file's bytes at that logical block.
    let mut per_path: HashMap<Vec<u8>, u64> = HashMap::new();
    let bs = BLOCK_SIZE as usize;
    for block in 0..(data.len() / bs) as u64 {
        let Some((path, logical)) = map.lookup(block) else {
            continue;
        };
        *per_path.entry(path.to_vec()).or_default() += 1;
        let rel = std::str::from_utf8(&path[1..]).unwrap();
        if let Some(content) = files.get(rel) {
            let at = logical as usize * bs;
            assert!(
                at < content.len(),
                "{rel}: logical block {logical} past the end"
            );
            let want = &content[at..(at + bs).min(content.len())];
            let got = &data[block as usize * bs..][..want.len()];
            assert!(
                got == want,
                "{rel}: block {block} is not logical block {logical}"
            );
        } else {
            // Only directories are mapped besides the files.
            assert!(
                mnt.join(rel).is_dir() || rel.is_empty(),
                "unexpected mapped path {rel:?}"
            );
        }
    }
    for (rel, content) in &files {
        let path = format!("/{rel}");
        if rel.starts_with("sub/") {
            // Hidden below the tmpfs.
            assert!(
                !per_path.contains_key(path.as_bytes()),
                "{rel} crossed into tmpfs"
            );
            continue;
        }
        assert_eq!(
            per_path.get(path.as_bytes()).copied().unwrap_or(0),
            content.len().div_ceil(bs) as u64,
            "blocks of {rel}"
        );
    }
    assert!(per_path.contains_key(&b"/"[..]), "root directory mapped");
    assert!(per_path.contains_key(&b"/many"[..]), "directories mapped");
    assert!(
        !per_path.contains_key(&b"/link-to-odd"[..]),
        "symlink not followed"
    );
    assert!(
        !per_path.contains_key(&b"/zz-hardlink"[..]),
        "hard link mapped once"
    );
    assert!(!per_path.contains_key(&b"/sub/on-tmpfs"[..]));
}

/// The image block (in file-system blocks) holding the inode of `path`,
/// by `debugfs` (`stat` for the number, `imap` for the place).
fn debugfs_imap_block(img: &Path, path: &str) -> u64 {
    let run = |req: String| {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(&req)
            .arg(img)
            .output()
            .expect("run debugfs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stat = run(format!("stat {path}"));
    // "Inode: 12   Type: regular ..."
    let ino: u64 = stat
        .split("Inode: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("debugfs stat {path}: {stat}"));
    let imap = run(format!("imap <{ino}>"));
    imap.split("located at block ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("debugfs imap <{ino}>: {imap}"))
}

#[test]
fn recording_mount_writes_a_profile_naming_the_files_read() {
    if unavailable(true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut files = test_files();
    // 300 empty files: their inodes fill about 19 inode-table blocks.
    for i in 0..300 {
        files.insert(format!("pad/p{i:03}"), Vec::new());
    }
    let data = build_ext4(tmp.path(), &files);
    let img = tmp.path().join("fs.ext4");
    // A file that will only be stat'ed, whose inode shares no inode-table
    // block with the inodes the reads below look up (by debugfs).
    let key_blocks: Vec<u64> = ["/", "/bin", "/bin/odd", "/small.txt", "/pad"]
        .iter()
        .map(|p| debugfs_imap_block(&img, p))
        .collect();
    let stat_only = (0..300)
        .rev()
        .map(|i| format!("/pad/p{i:03}"))
        .find(|p| !key_blocks.contains(&debugfs_imap_block(&img, p)))
        .expect("a pad file in an inode-table block of its own");
    let (table, source) = sealed_source(&data);
    let rt = runtime();
    let image = LazyImage::with_runtime(
        table,
        source,
        LazyImageOptions::default().record(Duration::from_secs(600)),
        rt.handle().clone(),
    )
    .unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let profile_path = tmp.path().join("profile.json");
    let digest = "12".repeat(32);
    let opts = MountOptions::default()
        .state_dir(tmp.path().join("state"))
        .record_profile(Some(ProfileTarget::new(&profile_path, "test", &digest)));
    let handle = worker::mount(image.clone(), &mnt, &opts).unwrap();
    assert_eq!(
        std::fs::read(mnt.join("bin/odd")).unwrap(),
        files["bin/odd"]
    );
    assert_eq!(
        std::fs::read(mnt.join("small.txt")).unwrap(),
        files["small.txt"]
    );
    let st = std::fs::metadata(mnt.join(&stat_only[1..])).unwrap();
    assert_eq!(st.len(), 0);
    handle.unmount().unwrap();

    let p = Profile::load(&profile_path).unwrap();
    assert_eq!(
        (p.image.as_str(), p.manifest_digest.as_str()),
        ("test", digest.as_str())
    );
    assert_eq!(
        (p.image_size, p.chunk_size, p.window_ms),
        (data.len() as u64, CHUNK, 600_000)
    );
    assert!(!p.chunks.is_empty());
    assert_eq!(p.chunks, image.access_log());
    let ranges = p.files_as_ranges();
    let find = |name: &str| {
        ranges
            .iter()
            .find(|(path, _)| path == name.as_bytes())
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{name} missing from {:?}", p.files))
    };
    // The whole of bin/odd was read: one range over all its blocks.
    assert_eq!(find("/bin/odd"), vec![(0, 700_001u64.div_ceil(BLOCK_SIZE))]);
    assert_eq!(find("/small.txt"), vec![(0, 1)]);
    let first = |name: &str| p.files.iter().position(|f| f.path == name.as_bytes());
    assert!(
        first("/bin/odd") < first("/small.txt"),
        "order of first access"
    );
    // Metadata blocks (superblock, bitmaps) were read and belong to no file.
    assert!(p.unmapped_blocks > 0);
    // The stat'ed file is listed for its inode alone: an entry without
    // blocks, and no data entry.
    let entries: Vec<_> = p
        .files
        .iter()
        .filter(|f| f.path == stat_only.as_bytes())
        .collect();
    assert_eq!(entries.len(), 1, "{stat_only} in {:?}", p.files);
    assert!(entries[0].blocks.is_empty());
    assert_eq!(find(&stat_only), Vec::<(u64, u64)>::new());
    // Its inode was read after bin/odd: listed after it.
    assert!(first(&stat_only) > first("/bin/odd"), "{:?}", p.files);
    // Readahead may pull in neighbours, but not the whole image.
    let with_data = ranges.iter().filter(|(_, r)| !r.is_empty()).count();
    assert!(
        with_data < test_files().len(),
        "{with_data} of {} files",
        test_files().len()
    );
    // The walk at unmount read more, but nothing after stop_recording was recorded.
    assert_eq!(image.access_log(), p.chunks);
}
