//! End-to-end mounts: a real ext4 image (from `mke2fs -d`) sealed into a
//! store, served through FUSE, a read-only loop device and the kernel's ext4.
//!
//! Needs root, `/dev/fuse`, loop devices and `mke2fs`; skipped otherwise
//! unless `LODE_REQUIRE_SERVERS=1`.

#![cfg(feature = "fuse")]

mod common;

use common::{CHUNK, build_ext4_with, runtime, seal, sealed_source, skip};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chunk_core::{ChunkKey, ChunkName};
use sha2::{Digest, Sha256};
use worker::{
    ChunkSource, ChunkTable, Fetched, LazyImage, LazyImageOptions, MountOptions, SourceError,
    TierId,
};

/// Whether this machine can run mount tests; prints why not.
fn unavailable(need_loop: bool) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("not root");
    }
    if !Path::new("/dev/fuse").exists() {
        return skip("/dev/fuse missing");
    }
    if need_loop && !Path::new("/dev/loop-control").exists() {
        return skip("/dev/loop-control missing");
    }
    if Command::new("mke2fs").arg("-V").output().is_err() {
        return skip("mke2fs missing (apt-get install e2fsprogs)");
    }
    false
}

/// Files of the test image: path → content.
fn test_files() -> BTreeMap<String, Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(42);
    let mut files = BTreeMap::new();
    let mut random = |n: usize| (0..n).map(|_| rng.u8(..)).collect::<Vec<u8>>();
    files.insert("small.txt".into(), b"hello from lode\n".to_vec());
    files.insert("bin/one-mib".into(), random(1 << 20));
    files.insert("bin/odd".into(), random(700_001));
    files.insert("data/zeros".into(), vec![0u8; 3 << 20]);
    files.insert("data/late".into(), random(1_500_000));
    for i in 0..20 {
        files.insert(format!("many/f{i:02}"), random(10_000 + i * 3000));
    }
    files
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last hole chunk of an image (far from anything read so far).
fn last_hole(image: &LazyImage) -> Option<u64> {
    (0..image.chunk_count())
        .rev()
        .find(|&i| image.chunk_name(i).is_none())
}

fn check_files(mnt: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (p, want) in files {
        let got = std::fs::read(mnt.join(p)).unwrap_or_else(|e| panic!("read {p}: {e}"));
        assert!(got == *want, "content of {p} differs");
    }
}

fn assert_all_gone(mnt: &Path, fuse_dir: &Path, loop_dev: Option<&Path>, state_dir: &Path) {
    assert!(!worker::is_mount_point(mnt), "ext4 still mounted");
    assert!(!worker::is_mount_point(fuse_dir), "FUSE still mounted");
    if let Some(dev) = loop_dev {
        wait_until("loop device to detach", Duration::from_secs(10), || {
            worker::loopdev::backing_file(dev).is_none()
        });
    }
    assert!(
        worker::mounts(state_dir).unwrap().is_empty(),
        "state file left"
    );
}

#[test]
fn mount_reads_files_through_ext4_and_unmount_cleans_up() {
    if unavailable(true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = test_files();
    let data = build_ext4_with(tmp.path(), &files, |_| ());
    let (table, source) = sealed_source(&data);
    let holes = table.chunks.iter().filter(|c| c.is_none()).count();
    let rt = runtime();
    let image = LazyImage::with_runtime(
        table,
        source.clone(),
        LazyImageOptions::default(),
        rt.handle().clone(),
    )
    .unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let state_dir = tmp.path().join("state");
    let stats_path = tmp.path().join("stats.json");
    let opts = MountOptions::default()
        .state_dir(&state_dir)
        .stats_path(Some(stats_path.clone()));
    let handle = worker::mount(image.clone(), &mnt, &opts).unwrap();
    let state = handle.state().clone();
    assert!(worker::is_mount_point(&mnt));
    let dev = state.loop_device.clone().expect("loop device");
    assert_eq!(
        worker::loopdev::backing_file(&dev),
        Some(state.image_file.clone())
    );
    assert_eq!(worker::mounts(&state_dir).unwrap(), vec![state.clone()]);

    // Reading one small file fetches only a few chunks, not the image.
    assert_eq!(
        std::fs::read(mnt.join("small.txt")).unwrap(),
        files["small.txt"]
    );
    let after_small = image.stats();
    assert!(
        after_small.distinct_chunks_fetched < (after_small.chunks_total - holes as u64),
        "lazy: {after_small:?}"
    );
    check_files(&mnt, &files);
    // Writes are refused.
    assert!(std::fs::write(mnt.join("new"), b"x").is_err());
    assert!(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&state.image_file)
            .is_err()
    );

    // A hole read through the FUSE file: zeros, no fetch.
    let hole = last_hole(&image).expect("the image has holes");
    let fetched = source.total_fetches();
    let f = std::fs::File::open(&state.image_file).unwrap();
    let mut buf = vec![1u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, hole * u64::from(CHUNK) + 8192)
        .unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert_eq!(source.total_fetches(), fetched);

    let s = image.stats();
    assert!(
        s.reads > 0 && s.bytes_served > 0 && s.read_errors == 0,
        "{s:?}"
    );
    assert!(s.holes_served > 0, "zero chunks served as holes: {s:?}");
    assert_eq!(s.tiers["store"].chunks, source.total_fetches());
    // `f` is still open: unmount must not wait for it forever.
    let t0 = Instant::now();
    handle.unmount().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "unmount took {:?}",
        t0.elapsed()
    );
    let uncached = hole * u64::from(CHUNK) + 448 * 1024;
    assert!(
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, uncached).is_err(),
        "reads on a file left open after unmount fail"
    );
    drop(f);
    assert_all_gone(&mnt, &state.fuse_dir, Some(&dev), &state_dir);
    let written: worker::Stats =
        serde_json::from_slice(&std::fs::read(&stats_path).unwrap()).unwrap();
    assert!(written.reads >= s.reads && written.chunks_fetched > 0);
}

#[test]
fn file_only_mount_serves_the_exact_image() {
    if unavailable(false) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = test_files();
    let data = build_ext4_with(tmp.path(), &files, |_| ());
    let (table, source) = sealed_source(&data);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let image = LazyImage::with_runtime(
        table,
        source,
        LazyImageOptions::default(),
        rt.handle().clone(),
    )
    .unwrap();
    let mnt = tmp.path().join("file");
    std::fs::create_dir(&mnt).unwrap();
    let state_dir = tmp.path().join("state");
    let opts = MountOptions::default()
        .state_dir(&state_dir)
        .file_only(true);
    let handle = worker::mount(image, &mnt, &opts).unwrap();
    let file = mnt.join("image");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), data.len() as u64);
    let names: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["image"]);
    // Concurrent readers of the whole file.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let file = file.clone();
            std::thread::spawn(move || Sha256::digest(std::fs::read(file).unwrap()))
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), Sha256::digest(&data));
    }
    handle.unmount().unwrap();
    assert_all_gone(&mnt, &mnt, None, &state_dir);
}

// ---- Tests with the mount in a separate process (the daemon) ----

const CHILD_ENV: &str = "LODE_WORKER_TEST_CHILD";
const DAEMONIZE_ENV: &str = "LODE_WORKER_TEST_DAEMONIZE";
/// The daemon's FUSE request timeout in seconds.
const REQUEST_TIMEOUT_ENV: &str = "LODE_WORKER_TEST_REQUEST_TIMEOUT";
/// The daemon exits with status 3 without reporting.
const EXIT_EARLY_ENV: &str = "LODE_WORKER_TEST_EXIT_EARLY";

/// A chunk source over a directory of files named by chunk name.
struct DirSource(PathBuf);

#[async_trait]
impl ChunkSource for DirSource {
    async fn fetch(&self, name: &ChunkName) -> Result<Fetched, SourceError> {
        match std::fs::read(self.0.join(name.to_hex())) {
            Ok(b) => Ok(Fetched {
                bytes: Bytes::from(b),
                tier: TierId::untrusted("dir"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(SourceError::NotFound { name: *name })
            }
            Err(e) => Err(SourceError::Tier {
                tier: "dir".into(),
                source: Box::new(e),
            }),
        }
    }
}

/// An error and its causes, `: `-separated (as `lode` prints them).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// Writes chunks and the table (with keys: test data only) for the child.
fn write_spec(dir: &Path, table: &ChunkTable, stored: &[(ChunkName, Bytes)]) {
    let chunks = dir.join("chunks");
    std::fs::create_dir_all(&chunks).unwrap();
    for (n, ct) in stored {
        std::fs::write(chunks.join(n.to_hex()), ct).unwrap();
    }
    let entries: Vec<Option<(String, String)>> = table
        .chunks
        .iter()
        .map(|c| c.as_ref().map(|r| (r.name.to_hex(), hex(r.key.expose()))))
        .collect();
    let spec = serde_json::json!({
        "image_size": table.image_size,
        "chunk_size": table.chunk_size,
        "chunks": entries,
    });
    std::fs::write(dir.join("spec.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
}

/// Entry point of the daemon process of the tests below; does nothing
/// unless started by them (with `LODE_WORKER_TEST_CHILD` set).
#[test]
#[ignore = "helper process for the daemon tests"]
fn daemon_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("spec.json")).unwrap()).unwrap();
    let chunks = spec["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c.as_array().map(|pair| chunk_core::ChunkRef {
                name: pair[0].as_str().unwrap().parse().unwrap(),
                key: ChunkKey::from_bytes(unhex32(pair[1].as_str().unwrap())),
            })
        })
        .collect();
    let table = ChunkTable {
        image_size: spec["image_size"].as_u64().unwrap(),
        chunk_size: spec["chunk_size"].as_u64().unwrap() as u32,
        chunks,
    };
    // As `lode mount` does: fork before any runtime exists, return in the
    // parent once the daemon reports readiness.
    let daemonize = std::env::var_os(DAEMONIZE_ENV).is_some();
    let readiness = if daemonize {
        // SAFETY: the only other thread is libtest's main thread, which
        // only waits for this test's result (nothing runs with
        // --test-threads=1) and holds no lock the daemon takes; the daemon
        // never returns to the harness (it exits below).
        match unsafe { worker::spawn_daemon(&worker::DaemonOptions::default()) } {
            Ok(worker::Daemon::Parent { pid }) => {
                println!("DAEMON-READY {pid}");
                return;
            }
            Ok(worker::Daemon::Child(r)) => {
                // Before readiness stdout is still the parent's pipe.
                println!("DAEMON-DUMPABLE {}", worker::is_dumpable().unwrap());
                if std::env::var_os(EXIT_EARLY_ENV).is_some() {
                    drop(r);
                    std::process::exit(3);
                }
                Some(r)
            }
            Err(e) => {
                println!("DAEMON-ERR {e}");
                return;
            }
            Ok(_) => unreachable!("Daemon is non_exhaustive"),
        }
    } else {
        None
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let source = Arc::new(DirSource(dir.join("chunks")));
    let image = LazyImage::with_runtime(
        table,
        source,
        LazyImageOptions::default(),
        rt.handle().clone(),
    )
    .unwrap();
    let mut opts = MountOptions::default()
        .state_dir(dir.join("state"))
        .stats_path(Some(dir.join("stats.json")));
    if let Ok(secs) = std::env::var(REQUEST_TIMEOUT_ENV) {
        opts = opts.request_timeout(Some(Duration::from_secs(secs.parse().unwrap())));
    }
    let mnt = std::env::var_os("LODE_WORKER_TEST_MNT").map_or(dir.join("mnt"), PathBuf::from);
    let handle = match (worker::mount(image, &mnt, &opts), readiness) {
        (Ok(h), Some(r)) => {
            r.ready().unwrap();
            h
        }
        (Ok(h), None) => h,
        (Err(e), Some(r)) => {
            r.fail(&chain(&e));
            std::process::exit(1);
        }
        (Err(e), None) => panic!("mount: {e}"),
    };
    println!("READY");
    let r = handle.wait();
    if daemonize {
        // Only this thread survived the fork: leave without the harness.
        std::process::exit(i32::from(r.is_err()));
    }
    r.unwrap();
}

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = worker::unmount(&self.dir.join("mnt"), &self.dir.join("state"));
    }
}

fn start_daemon(dir: &Path) -> Daemon {
    start_daemon_with(dir, &[])
}

fn start_daemon_with(dir: &Path, env: &[(&str, &str)]) -> Daemon {
    std::fs::create_dir_all(dir.join("mnt")).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "daemon_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.ends_with("READY") {
                let _ = tx.send(());
            }
        }
    });
    let daemon = Daemon {
        child,
        dir: dir.to_path_buf(),
    };
    rx.recv_timeout(Duration::from_secs(30))
        .expect("daemon did not become ready");
    daemon
}

fn prepare(tmp: &Path) -> BTreeMap<String, Vec<u8>> {
    let files = test_files();
    let data = build_ext4_with(tmp, &files, |_| ());
    let (table, stored) = seal(&data);
    write_spec(tmp, &table, &stored);
    files
}

#[test]
fn unmount_from_another_process_ends_the_daemon_and_writes_stats() {
    if unavailable(true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = prepare(tmp.path());
    let mut daemon = start_daemon(tmp.path());
    let mnt = tmp.path().join("mnt");
    let state_dir = tmp.path().join("state");
    check_files(&mnt, &files);
    let state = worker::mounts(&state_dir)
        .unwrap()
        .pop()
        .expect("state file");
    assert_eq!(state.pid, daemon.child.id());

    // Busy: a process with an open file keeps everything mounted.
    let busy = std::fs::File::open(mnt.join("small.txt")).unwrap();
    let err = worker::unmount(&mnt, &state_dir).unwrap_err();
    assert!(err.to_string().contains("busy"), "{err}");
    assert!(worker::is_mount_point(&mnt));
    drop(busy);

    let ended = worker::unmount(&mnt, &state_dir).unwrap();
    assert_eq!(ended.pid, state.pid);
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "daemon exit: {status:?}");
    assert_all_gone(
        &mnt,
        &state.fuse_dir,
        state.loop_device.as_deref(),
        &state_dir,
    );
    let stats: worker::Stats =
        serde_json::from_slice(&std::fs::read(tmp.path().join("stats.json")).unwrap()).unwrap();
    assert!(stats.reads > 0 && stats.chunks_fetched > 0, "{stats:?}");
    assert_eq!(stats.tiers["dir"].chunks, stats.chunks_fetched);
}

#[test]
fn killed_daemon_fails_reads_quickly_and_unmount_cleans_up() {
    if unavailable(true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = prepare(tmp.path());
    let mut daemon = start_daemon(tmp.path());
    let mnt = tmp.path().join("mnt");
    let state_dir = tmp.path().join("state");
    assert_eq!(
        std::fs::read(mnt.join("small.txt")).unwrap(),
        files["small.txt"]
    );
    let state = worker::mounts(&state_dir)
        .unwrap()
        .pop()
        .expect("state file");

    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();

    // A file never read before: its blocks must come from the dead FUSE.
    let path = mnt.join("data/late");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::fs::File::open(&path).and_then(|mut f| {
            let mut v = Vec::new();
            f.read_to_end(&mut v).map(|_| v)
        });
        let _ = tx.send(r);
    });
    let result = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("read on a dead daemon's mount hung");
    match result {
        Err(e) => eprintln!("read after daemon death failed as expected: {e}"),
        Ok(v) => panic!("read after daemon death returned {} bytes", v.len()),
    }

    let ended = worker::unmount(&mnt, &state_dir).unwrap();
    assert_eq!(ended.pid, state.pid);
    assert_all_gone(
        &mnt,
        &state.fuse_dir,
        state.loop_device.as_deref(),
        &state_dir,
    );
}

/// Sends `signal` to `pid`.
fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with plain integers, to our own child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
}

#[test]
fn hung_daemon_fails_readers_after_the_request_timeout_and_unmount_cleans_up() {
    if unavailable(true) {
        return;
    }
    // The kernel checks for expired requests every 15 s and raises a shorter
    // timeout to that (FUSE_TIMEOUT_TIMER_FREQ): a 3 s timeout fires after
    // 15 to 30 s.
    const TIMEOUT_S: u64 = 3;
    const KERNEL_PERIOD_S: u64 = 15;
    let tmp = tempfile::tempdir().unwrap();
    let files = prepare(tmp.path());
    let daemon = start_daemon_with(tmp.path(), &[(REQUEST_TIMEOUT_ENV, "3")]);
    let mnt = tmp.path().join("mnt");
    let state_dir = tmp.path().join("state");
    assert_eq!(
        std::fs::read(mnt.join("small.txt")).unwrap(),
        files["small.txt"]
    );
    let state = worker::mounts(&state_dir)
        .unwrap()
        .pop()
        .expect("state file");

    let pid = daemon.child.id();
    signal(pid, libc::SIGSTOP);
    // A file never read before: its blocks must come from the stopped daemon.
    let path = mnt.join("data/late");
    let (tx, rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    std::thread::spawn(move || {
        let r = std::fs::File::open(&path).and_then(|mut f| {
            let mut v = Vec::new();
            f.read_to_end(&mut v).map(|_| v)
        });
        let _ = tx.send(r);
    });
    let limit = Duration::from_secs(TIMEOUT_S.max(KERNEL_PERIOD_S) + KERNEL_PERIOD_S + 15);
    let result = rx.recv_timeout(limit);
    let waited = t0.elapsed();
    signal(pid, libc::SIGCONT);
    match result {
        Err(_) => panic!("a reader of a stopped daemon's mount still hangs after {waited:?}"),
        Ok(Ok(v)) => panic!(
            "read of a stopped daemon's mount returned {} bytes",
            v.len()
        ),
        Ok(Err(e)) => eprintln!("reader failed after {waited:?}: {e}"),
    }
    // The kernel aborted the whole connection: later reads fail at once.
    let t1 = Instant::now();
    assert!(std::fs::read(mnt.join("bin/odd")).is_err());
    assert!(t1.elapsed() < Duration::from_secs(10), "{:?}", t1.elapsed());

    // The daemon, running again, is told (or finds its connection gone);
    // `unmount` leaves nothing behind either way.
    worker::unmount(&mnt, &state_dir).unwrap();
    assert_all_gone(
        &mnt,
        &state.fuse_dir,
        state.loop_device.as_deref(),
        &state_dir,
    );
    drop(daemon);
}

fn run_daemonizing_child(dir: &Path, mnt: &Path) -> String {
    run_daemonizing_child_with(dir, mnt, &[])
}

fn run_daemonizing_child_with(dir: &Path, mnt: &Path, env: &[(&str, &str)]) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "daemon_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env(DAEMONIZE_ENV, "1")
        .env("LODE_WORKER_TEST_MNT", mnt)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "child: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn spawn_daemon_returns_once_mounted_and_reports_failures() {
    if unavailable(true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = prepare(tmp.path());
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let state_dir = tmp.path().join("state");

    // A mountpoint that does not exist: the parent gets the daemon's error.
    let out = run_daemonizing_child(tmp.path(), &tmp.path().join("missing"));
    assert!(
        out.contains("DAEMON-ERR") && out.contains("not a directory"),
        "{out}"
    );
    assert!(worker::mounts(&state_dir).unwrap().is_empty());

    // A daemon that exits without reporting: the parent says how it ended.
    let out = run_daemonizing_child_with(tmp.path(), &mnt, &[(EXIT_EARLY_ENV, "1")]);
    assert!(
        out.contains("DAEMON-ERR mount daemon (pid ")
            && out.contains("exited before the mount was ready (exit status: 3)"),
        "{out}"
    );
    assert!(worker::mounts(&state_dir).unwrap().is_empty());

    // The parent returns only once the mount is usable; the daemon, which
    // holds the keys, cannot be dumped or traced by other users.
    let out = run_daemonizing_child(tmp.path(), &mnt);
    assert!(out.contains("DAEMON-READY"), "{out}");
    assert!(out.contains("DAEMON-DUMPABLE false"), "{out}");
    let state = worker::mounts(&state_dir)
        .unwrap()
        .pop()
        .expect("state file");
    check_files(&mnt, &files);
    let pid = state.pid;
    worker::unmount(&mnt, &state_dir).unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            // A zombie until init reaps it.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
        }
    );
    assert_all_gone(
        &mnt,
        &state.fuse_dir,
        state.loop_device.as_deref(),
        &state_dir,
    );
}

// ---- Other local users ----

/// Runs `args` as user `nobody` (group `nogroup`, no supplementary groups).
fn as_nobody(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(args)
        .output()
        .expect("running setpriv (util-linux)")
}

/// `(succeeded, stderr)` of `cat PATH` as `nobody`.
fn nobody_cats(path: &Path) -> (bool, String) {
    let out = as_nobody(&["cat".as_ref(), path.as_os_str()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn other_users_read_image_files_through_ext4_but_not_the_fuse_file() {
    use std::os::unix::fs::PermissionsExt;
    if unavailable(true) {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip("setpriv missing (util-linux)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Let `nobody` walk to the mountpoints (tempdirs are 0700).
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let files = test_files();
    let data = build_ext4_with(tmp.path(), &files, |_| ());
    let (table, source) = sealed_source(&data);
    let rt = runtime();
    let image = LazyImage::with_runtime(
        table,
        source,
        LazyImageOptions::default(),
        rt.handle().clone(),
    )
    .unwrap();

    // The default layout: FUSE under the state directory, ext4 at `mnt`.
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let state_dir = tmp.path().join("state");
    let opts = MountOptions::default().state_dir(&state_dir);
    let handle = worker::mount(image.clone(), &mnt, &opts).unwrap();
    let state = handle.state().clone();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&state_dir), 0o700);
    let out = as_nobody(&["ls".as_ref(), state_dir.as_os_str()]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "nobody listed the state directory: {out:?}"
    );
    let (ok, err) = nobody_cats(&state.image_file);
    assert!(!ok && err.contains("Permission denied"), "{ok} {err}");
    // The kernel's ext4 serves every user by the image's own permissions.
    let small = mnt.join("small.txt");
    assert_eq!(mode(&small) & 0o004, 0o004, "small.txt is world-readable");
    let out = as_nobody(&["cat".as_ref(), small.as_os_str()]);
    assert!(
        out.status.success(),
        "nobody could not read small.txt: {out:?}"
    );
    assert_eq!(out.stdout, files["small.txt"]);
    // Root still reads the FUSE file.
    assert_eq!(std::fs::read(&state.image_file).unwrap().len(), data.len());
    handle.unmount().unwrap();

    // The FUSE file itself in a directory anyone may walk: still root's only.
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    let handle = worker::mount(image, &open, &opts.clone().file_only(true)).unwrap();
    let file = open.join("image");
    assert_eq!(mode(&file), 0o400);
    let (ok, err) = nobody_cats(&file);
    assert!(!ok && err.contains("Permission denied"), "{ok} {err}");
    assert_eq!(std::fs::read(&file).unwrap(), data);
    handle.unmount().unwrap();
    assert_all_gone(&open, &open, None, &state_dir);
}
