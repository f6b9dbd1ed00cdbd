//! Prefetch profiles through the real `lode` binary: record on a lazy mount
//! (FUSE + loop + the kernel's ext4), save, prefetch at the next mount, and
//! the refusals; `lode profile show|rm`, `lode inspect` and `lode gc`.
//!
//! The mount test needs root, /dev/fuse, loop devices, busybox-static and
//! chroot; it is skipped without them unless `LODE_REQUIRE_SERVERS=1`.

mod oci_fixture;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use oci_fixture::{Env, busybox_image, can_mount, files_in, two_layer_image};
use serde_json::Value;

/// A scratch store with the busybox image pushed as `demo` (and the image
/// reference), or None when lazy mounts or busybox are unavailable (skipped).
fn pushed_demo() -> Option<(Env, String)> {
    if !can_mount() {
        return None;
    }
    let env = Env::new();
    let image = busybox_image(&env.dir.path().join("oci"))?;
    env.ok(&["push", &image, "--name", "demo"]);
    Some((env, image))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs `cmd` chrooted in `root` with /proc bound; returns stdout.
fn chroot(root: &Path, cmd: &[&str]) -> String {
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir).ok();
    let out = Command::new("chroot")
        .arg(root)
        .args(cmd)
        .output()
        .expect("chroot");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Mount<'a> {
    env: &'a Env,
    mnt: PathBuf,
    stats: PathBuf,
    mounted: bool,
}

impl<'a> Mount<'a> {
    /// `lode mount NAME` with an empty cache dir, readahead off (so what is
    /// fetched is exactly what is read or prefetched), and `extra` flags.
    fn new(env: &'a Env, name: &str, tag: &str, extra: &[&str]) -> (Self, String) {
        let dir = env.dir.path();
        let mnt = dir.join(format!("mnt-{tag}"));
        let cache = dir.join(format!("cache-{tag}"));
        let stats = dir.join(format!("stats-{tag}.json"));
        std::fs::create_dir_all(&mnt).unwrap();
        let mut args = vec![
            "mount",
            name,
            s(&mnt),
            "--cache-dir",
            s(&cache),
            "--stats",
            s(&stats),
            "--readahead-chunks",
            "0",
        ];
        args.extend(extra);
        let out = env.run(&args);
        assert!(
            out.status.success(),
            "lode {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let m = Self {
            env,
            mnt,
            stats,
            mounted: true,
        };
        (m, stderr)
    }

    fn cache(&self) -> PathBuf {
        let tag = self.mnt.file_name().unwrap().to_str().unwrap();
        self.env.dir.path().join(tag.replacen("mnt-", "cache-", 1))
    }

    /// Unmounts and returns the stats.
    fn umount(mut self) -> Value {
        self.env.ok(&["umount", s(&self.mnt)]);
        self.mounted = false;
        serde_json::from_slice(&std::fs::read(&self.stats).expect("stats written")).unwrap()
    }
}

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        if self.mounted {
            let _ = self.env.run(&["umount", s(&self.mnt)]);
        }
    }
}

const RUN: &[&str] = &["/bin/busybox", "sha256sum", "/bin/busybox", "/etc/passwd"];

#[test]
fn record_save_and_prefetch_on_real_mounts() {
    let Some((env, _)) = pushed_demo() else {
        return;
    };
    let profile_path = env.dir.path().join("demo-profile.json");

    // 1. Record: run busybox over its own binary and /etc/passwd, unmount.
    let (m, _) = Mount::new(
        &env,
        "demo",
        "record",
        &[
            "--record-profile",
            s(&profile_path),
            "--profile-window",
            "10m",
        ],
    );
    let want = chroot(&m.mnt, RUN);
    let recorded_stats = m.umount();
    let p: Value = serde_json::from_slice(&std::fs::read(&profile_path).expect("profile written"))
        .expect("profile JSON");
    assert_eq!(p["version"], 1);
    assert_eq!(p["image"], "demo");
    assert_eq!(p["window_ms"], 600_000);
    let inspect = env.json(&["inspect", "demo", "--json"]);
    assert_eq!(p["manifest_digest"], inspect["public_digest"]);
    assert_eq!(p["image_size"], inspect["image_bytes"]);
    assert!(inspect["profile"].is_null(), "{inspect}");
    let chunks: Vec<u64> = p["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    // Readahead was off: every chunk in the profile was fetched by a read
    // (the walk that maps files at unmount may read a few more).
    assert!(!chunks.is_empty());
    assert!(
        chunks.len() as u64 <= recorded_stats["demand_fetches"].as_u64().unwrap(),
        "{recorded_stats}"
    );
    // The files read are named, with their blocks: all of /bin/busybox.
    let files = p["files"].as_array().unwrap();
    let blocks_of = |path: &str| -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = files
            .iter()
            .filter(|f| f["path"] == path)
            .flat_map(|f| f["blocks"].as_array().unwrap().clone())
            .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
            .collect();
        v.sort();
        v
    };
    let busybox_blocks = std::fs::metadata("/bin/busybox")
        .unwrap()
        .len()
        .div_ceil(4096);
    let bb = blocks_of("/bin/busybox");
    assert_eq!(
        bb.iter().map(|r| r.1).sum::<u64>(),
        busybox_blocks,
        "{bb:?}"
    );
    assert_eq!(blocks_of("/etc/passwd"), vec![(0, 1)], "{p}");
    assert!(
        p["unmapped_blocks"].as_u64().unwrap() > 0,
        "metadata was read"
    );

    // 2. Save: only the chunk part is stored.
    let out = env.ok(&["profile", "save", "demo", s(&profile_path)]);
    assert!(out.contains(&format!("{} chunks", chunks.len())), "{out}");
    let stored = std::fs::read_to_string(env.store().join("profiles/demo")).unwrap();
    assert!(
        !stored.contains("busybox") && !stored.contains("passwd"),
        "{stored}"
    );
    let inspect = env.json(&["inspect", "demo", "--json"]);
    assert_eq!(inspect["profile"]["chunks"], chunks.len() as u64);
    assert_eq!(inspect["profile"]["matches_manifest"], true);

    // 3. Prefetch: a mount with an empty cache fetches the profile's chunks in
    // the background; once done, the same program reads nothing from the store.
    let (m, stderr) = Mount::new(&env, "demo", "prefetch", &[]);
    assert!(
        stderr.contains(&format!("prefetching {} chunks", chunks.len())),
        "{stderr}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while files_in(&m.cache()) < chunks.len() {
        assert!(Instant::now() < deadline, "prefetch did not fill L1");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(chroot(&m.mnt, RUN), want);
    let st = m.umount();
    let pf = &st["prefetch"];
    assert_eq!(pf["requested"], chunks.len() as u64, "{st}");
    assert_eq!(pf["fetched"], chunks.len() as u64, "{st}");
    assert_eq!(
        (pf["failed"].as_u64(), pf["finished"].as_bool()),
        (Some(0), Some(true))
    );
    assert_eq!(st["demand_fetches"], 0, "reads waited for no fetch: {st}");
    assert_eq!(
        st["tiers"]["store"]["chunks"],
        chunks.len() as u64,
        "the store served the prefetch and nothing else: {st}"
    );

    // 4. --no-prefetch: the reads fetch on demand (here from a store slowed
    // down by --store-latency: every store fetch takes at least 30 ms).
    let (m, stderr) = Mount::new(
        &env,
        "demo",
        "noprefetch",
        &["--no-prefetch", "--store-latency", "30ms"],
    );
    assert!(!stderr.contains("prefetching"), "{stderr}");
    assert_eq!(chroot(&m.mnt, RUN), want);
    let st = m.umount();
    assert!(st.get("prefetch").is_none(), "{st}");
    assert_eq!(st["prefetch_chunks"], 0);
    assert!(
        st["demand_fetches"].as_u64().unwrap() >= chunks.len() as u64,
        "{st}"
    );
    let store_latency = &st["tiers"]["store"]["fetch_latency"];
    assert!(store_latency["count"].as_u64().unwrap() > 0, "{st}");
    assert!(
        store_latency["p50_us"].as_u64().unwrap() >= 30_000,
        "store fetches were delayed: {st}"
    );
    assert!(
        recorded_stats["tiers"]["store"]["fetch_latency"]["p50_us"]
            .as_u64()
            .unwrap()
            < 30_000,
        "and without the flag they were not: {recorded_stats}"
    );

    // 5. A stored profile of another manifest is not used: a warning.
    let other = two_layer_image(&env.dir.path().join("other"), 1, 2);
    env.ok(&["push", &other, "--name", "other"]);
    std::fs::copy(
        env.store().join("profiles/demo"),
        env.store().join("profiles/other"),
    )
    .unwrap();
    let (m, stderr) = Mount::new(&env, "other", "stale", &[]);
    assert!(
        stderr.contains("warning: not prefetching") && stderr.contains("record a new profile"),
        "{stderr}"
    );
    let st = m.umount();
    assert!(st.get("prefetch").is_none(), "{st}");

    // 6. --file-only recording: chunks only, and it says so.
    let file_profile = env.dir.path().join("file-only.json");
    let (m, stderr) = Mount::new(
        &env,
        "demo",
        "fileonly",
        &[
            "--file-only",
            "--no-prefetch",
            "--record-profile",
            s(&file_profile),
        ],
    );
    assert!(stderr.contains("list chunks only"), "{stderr}");
    let mut head = vec![0u8; 8192];
    use std::io::Read;
    std::fs::File::open(m.mnt.join("image"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    m.umount();
    let fp: Value = serde_json::from_slice(&std::fs::read(&file_profile).unwrap()).unwrap();
    assert_eq!(fp["chunks"][0]["index"], 0, "{fp}");
    assert_eq!(fp["files"].as_array().unwrap().len(), 0);
}

/// A profile for `name` made from its public manifest facts.
fn handmade_profile(env: &Env, name: &str, chunks: &[u64]) -> PathBuf {
    let facts = env.json(&["inspect", name, "--json"]);
    let p = serde_json::json!({
        "version": 1,
        "image": name,
        "manifest_digest": facts["public_digest"],
        "chunk_size": facts["chunk_size"],
        "image_size": facts["image_bytes"],
        "window_ms": 1000,
        "chunks": chunks.iter().enumerate().map(|(i, c)| serde_json::json!({"index": c, "at_ms": i})).collect::<Vec<_>>(),
        "files": [{"path": "/secret/app", "blocks": [[0, 1]]}],
        "unmapped_blocks": 3
    });
    let path = env.dir.path().join(format!("{name}-profile.json"));
    std::fs::write(&path, serde_json::to_vec(&p).unwrap()).unwrap();
    path
}

#[test]
fn save_refuses_foreign_profiles_show_rm_and_gc_collects_orphans() {
    let env = Env::new();
    let images = env.dir.path().join("images");
    env.ok(&[
        "push",
        &two_layer_image(&images.join("a"), 1, 10),
        "--name",
        "a",
    ]);
    env.ok(&[
        "push",
        &two_layer_image(&images.join("b"), 1, 11),
        "--name",
        "b",
    ]);
    let pa = handmade_profile(&env, "a", &[2, 0, 1]);
    let pb = handmade_profile(&env, "b", &[1]);

    // Another image's profile is refused, naming both digests.
    let out = env.run(&["profile", "save", "b", s(&pa)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let da = env.json(&["inspect", "a", "--json"])["public_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("refusing") && err.contains(&da[..12]) && err.contains("record a new profile"),
        "{err}"
    );
    assert!(!env.store().join("profiles/b").exists());
    // A malformed one too, saying what is wrong.
    let bad = env.dir.path().join("bad.json");
    std::fs::write(&bad, br#"{"version":1}"#).unwrap();
    let out = env.run(&["profile", "save", "a", s(&bad)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid profile"));
    // Unknown image.
    let out = env.run(&["profile", "save", "nope", s(&pa)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image named \"nope\""));

    env.ok(&["profile", "save", "a", s(&pa)]);
    env.ok(&["profile", "save", "b", s(&pb)]);
    let stored = std::fs::read_to_string(env.store().join("profiles/a")).unwrap();
    assert!(
        !stored.contains("/secret/app"),
        "paths are not stored: {stored}"
    );
    let show = env.json(&["profile", "show", "a", "--json"]);
    assert_eq!(show["chunks"], 3);
    assert_eq!(show["order"], serde_json::json!([2, 0, 1]));
    assert_eq!(show["matches_manifest"], true);
    assert!(
        env.ok(&["profile", "show", "a"])
            .contains("the current manifest")
    );
    assert!(env.ok(&["inspect", "a"]).contains("profile       3 chunks"));

    // rm, then show fails clearly.
    env.ok(&["profile", "rm", "b"]);
    let out = env.run(&["profile", "show", "b"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no profile for \"b\""));
    assert!(!env.run(&["profile", "rm", "b"]).status.success());
    env.ok(&["profile", "save", "b", s(&pb)]);

    // gc: profiles of images that still exist stay; the profile of a deleted
    // image is reported by a dry run and deleted with --delete.
    let gc = env.json(&["gc", "--json"]);
    assert_eq!(gc["profiles"], 2);
    assert_eq!(gc["orphan_profiles"], serde_json::json!([]));
    std::fs::remove_file(env.manifest_path("a")).unwrap();
    let gc = env.json(&["gc", "--json"]);
    assert_eq!(gc["orphan_profiles"], serde_json::json!(["a"]));
    assert_eq!(gc["profiles_deleted"], 0);
    assert!(
        env.store().join("profiles/a").exists(),
        "a dry run deletes nothing"
    );
    let gc = env.json(&["gc", "--delete", "--grace", "0s", "--json"]);
    assert_eq!(gc["profiles_deleted"], 1, "{gc}");
    assert!(
        gc["deleted"].as_u64().unwrap() > 0,
        "a's own chunks go too: {gc}"
    );
    assert!(!env.store().join("profiles/a").exists());
    assert!(env.store().join("profiles/b").exists());
    // b is intact: its profile still fits and its chunks are all there.
    env.assert_complete("b");
    assert_eq!(
        env.json(&["profile", "show", "b", "--json"])["matches_manifest"],
        true
    );
}

fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(want))
}

#[test]
fn busy_umount_is_refused_and_a_stopped_foreground_mount_writes_its_profile() {
    let Some((env, _)) = pushed_demo() else {
        return;
    };

    // A recording daemon mount with a process inside: `lode umount` refuses
    // and changes nothing; once the process is gone it unmounts and the
    // profile is written.
    let profile = env.dir.path().join("busy.json");
    let (m, _) = Mount::new(&env, "demo", "busy", &["--record-profile", s(&profile)]);
    let mut inside = Command::new("sleep")
        .arg("60")
        .current_dir(m.mnt.join("etc"))
        .spawn()
        .unwrap();
    let out = env.run(&["umount", s(&m.mnt)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("busy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&m.mnt), "still mounted");
    assert_eq!(
        std::fs::read_to_string(m.mnt.join("etc/passwd")).unwrap(),
        "root:x:0:0:root:/root:/bin/sh\n",
        "and still served"
    );
    assert!(!profile.exists());
    inside.kill().unwrap();
    inside.wait().unwrap();
    let mnt = m.mnt.clone();
    m.umount();
    assert!(!is_mounted(&mnt));
    let p: Value = serde_json::from_slice(&std::fs::read(&profile).unwrap()).unwrap();
    assert!(
        p["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "/etc/passwd"),
        "{p}"
    );

    // A foreground mount stopped with SIGTERM writes its profile before ext4 goes.
    let fg_profile = env.dir.path().join("fg.json");
    let fg_mnt = env.dir.path().join("mnt-fg");
    std::fs::create_dir_all(&fg_mnt).unwrap();
    let mut child = env
        .cmd()
        .args([
            "mount",
            "demo",
            s(&fg_mnt),
            "--foreground",
            "--record-profile",
        ])
        .arg(&fg_profile)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_mounted(&fg_mnt) {
        assert!(Instant::now() < deadline, "foreground mount never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read(fg_mnt.join("app/hello.sh")).unwrap();
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(child.wait().unwrap().success());
    assert!(!is_mounted(&fg_mnt));
    let p: Value = serde_json::from_slice(&std::fs::read(&fg_profile).unwrap()).unwrap();
    assert!(
        p["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "/app/hello.sh"),
        "{p}"
    );
}

/// The loop device's kernel readahead (`/sys/block/loopN/queue/read_ahead_kb`)
/// under the ext4 mounted at `mnt`, found through `/proc/mounts`.
fn loop_read_ahead_kb(mnt: &Path) -> u32 {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let want = mnt.to_str().unwrap();
    let dev = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            Some((f.next()?, f.next()?))
        })
        .find(|&(dev, at)| at == want && dev.starts_with("/dev/loop"))
        .map(|(dev, _)| dev.trim_start_matches("/dev/").to_string())
        .unwrap_or_else(|| panic!("no loop device mounted at {want}:\n{mounts}"));
    std::fs::read_to_string(format!("/sys/block/{dev}/queue/read_ahead_kb"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn chunk_indexes(profile: &Value) -> Vec<u64> {
    profile["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect()
}

#[test]
fn layout_push_stores_a_profile_that_mounts_use_without_flags() {
    let Some((env, image)) = pushed_demo() else {
        return;
    };

    // An image without a stored profile: the default readahead.
    let (m, _) = Mount::new(&env, "demo", "plain", &[]);
    assert_eq!(loop_read_ahead_kb(&m.mnt), 128);
    m.umount();

    // Record a start, then push a profile-guided layout of it.
    let recorded = env.dir.path().join("record.json");
    let (m, _) = Mount::new(
        &env,
        "demo",
        "record",
        &[
            "--record-profile",
            s(&recorded),
            "--kernel-readahead-kb",
            "0",
        ],
    );
    assert_eq!(loop_read_ahead_kb(&m.mnt), 0, "the flag is applied");
    let want = chroot(&m.mnt, RUN);
    m.umount();
    let pushed = env.json(&[
        "push",
        &image,
        "--name",
        "hot",
        "--layout-profile",
        s(&recorded),
        "--json",
    ]);

    // profiles/hot: bound to the new manifest, hint 0, the hot region's
    // chunks first and in order, then the rest up to the end, holes skipped.
    let stored: Value =
        serde_json::from_slice(&std::fs::read(env.store().join("profiles/hot")).unwrap()).unwrap();
    let inspect = env.json(&["inspect", "hot", "--json"]);
    assert_eq!(stored["manifest_digest"], inspect["public_digest"]);
    assert_eq!(stored["kernel_readahead_kb"], 0, "{stored}");
    assert_eq!(stored["version"], 1);
    let chunks = chunk_indexes(&stored);
    assert_eq!(pushed["prefetch_profile_chunks"], chunks.len() as u64);
    let cs = stored["chunk_size"].as_u64().unwrap();
    let start = pushed["hot_region"]["start"].as_u64().unwrap();
    let bytes = pushed["hot_region"]["bytes"].as_u64().unwrap();
    assert!(bytes > 0, "{pushed}");
    let hot_chunks: Vec<u64> = (start / cs..(start + bytes).div_ceil(cs)).collect();
    assert!(!hot_chunks.is_empty());
    assert_eq!(
        chunks[..hot_chunks.len()],
        hot_chunks[..],
        "hot region first: {chunks:?}"
    );
    let total = pushed["chunks_total"].as_u64().unwrap();
    assert!(chunks.windows(2).all(|w| w[0] < w[1]), "{chunks:?}");
    assert!(*chunks.last().unwrap() < total);
    assert!(
        (chunks.len() as u64) <= total - start / cs,
        "only from the hot region on"
    );
    assert!(
        stored["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["at_ms"] == 0)
    );
    let show = env.json(&["profile", "show", "hot", "--json"]);
    assert_eq!(show["kernel_readahead_kb"], 0);
    assert_eq!(show["matches_manifest"], true);
    assert!(
        env.ok(&["profile", "show", "hot"])
            .contains("readahead     0 KiB")
    );

    // A mount with no readahead flag and an empty cache: the profile's
    // chunks are prefetched and the loop device's readahead is 0.
    let (m, stderr) = Mount::new(&env, "hot", "auto", &[]);
    assert!(
        stderr.contains(&format!("prefetching {} chunks", chunks.len())),
        "{stderr}"
    );
    assert_eq!(loop_read_ahead_kb(&m.mnt), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while files_in(&m.cache()) < chunks.len() {
        assert!(Instant::now() < deadline, "prefetch did not fill L1");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(chroot(&m.mnt, RUN), want);
    let st = m.umount();
    assert_eq!(st["prefetch"]["requested"], chunks.len() as u64, "{st}");
    assert_eq!(st["prefetch"]["fetched"], chunks.len() as u64, "{st}");

    // The flag wins over the hint.
    let (m, _) = Mount::new(&env, "hot", "flag", &["--kernel-readahead-kb", "64"]);
    assert_eq!(loop_read_ahead_kb(&m.mnt), 64);
    m.umount();

    // A plain re-push replaces the manifest: the stale profile is deleted,
    // and mounts are back to the default.
    let repushed = env.json(&["push", &image, "--name", "hot", "--json"]);
    assert!(
        repushed.get("prefetch_profile_chunks").is_none(),
        "{repushed}"
    );
    assert!(!env.store().join("profiles/hot").exists());
    let (m, stderr) = Mount::new(&env, "hot", "repushed", &[]);
    assert!(!stderr.contains("prefetching"), "{stderr}");
    assert_eq!(loop_read_ahead_kb(&m.mnt), 128);
    m.umount();
}

#[test]
fn profile_save_keeps_a_readahead_hint() {
    let env = Env::new();
    env.ok(&[
        "push",
        &two_layer_image(&env.dir.path().join("a"), 1, 10),
        "--name",
        "a",
    ]);
    let path = handmade_profile(&env, "a", &[1, 0]);
    let mut p: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    p["kernel_readahead_kb"] = 0.into();
    std::fs::write(&path, serde_json::to_vec(&p).unwrap()).unwrap();
    env.ok(&["profile", "save", "a", s(&path)]);
    let show = env.json(&["profile", "show", "a", "--json"]);
    assert_eq!(show["kernel_readahead_kb"], 0, "{show}");
    assert!(
        env.ok(&["profile", "show", "a"])
            .contains("readahead     0 KiB")
    );
    // Without one, show says so.
    let plain = handmade_profile(&env, "a", &[1]);
    env.ok(&["profile", "save", "a", s(&plain)]);
    assert!(
        env.json(&["profile", "show", "a", "--json"])
            .get("kernel_readahead_kb")
            .is_none()
    );
    assert!(env.ok(&["profile", "show", "a"]).contains("no hint"));
    // An absurd hint is refused, naming it.
    p["kernel_readahead_kb"] = 10_000_000.into();
    std::fs::write(&path, serde_json::to_vec(&p).unwrap()).unwrap();
    let out = env.run(&["profile", "save", "a", s(&path)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kernel_readahead_kb"));
}
