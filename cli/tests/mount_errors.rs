//! A failed read in a lazy mount (chunk missing, bytes wrong, store failing)
//! is EIO for the reader and a log line naming the chunk in the daemon's
//! `--log-file`, never wrong data.
//!
//! Needs root and /dev/fuse (the FUSE file only: `--file-only`).

mod oci_fixture;

use std::path::Path;
use std::process::Command;

use oci_fixture::{Env, is_root, noise, oci_image, require};

const CHUNK: u64 = 512 * 1024;

/// The chunk names of manifest `name` by index (`None` for holes).
fn chunks_by_index(env: &Env, name: &str) -> Vec<Option<String>> {
    let bytes = std::fs::read(env.manifest_path(name)).expect("manifest file");
    let m = manifest::SealedManifest::decode(&bytes).expect("manifest decodes");
    m.names().map(|n| n.map(|n| n.to_hex())).collect()
}

/// `dd` of chunk `index` of the FUSE file; returns (success, stderr).
fn dd_chunk(file: &Path, index: usize) -> (bool, String) {
    let out = Command::new("dd")
        .arg(format!("if={}", file.display()))
        .args(["of=/dev/null", "bs=512K", "count=1", "status=none"])
        .arg(format!("skip={index}"))
        .output()
        .expect("running dd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Unmounts on drop, so a failing assertion leaves no mount behind.
struct Mounted<'a>(&'a Env, &'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["umount", self.1.to_str().expect("utf-8")]);
    }
}

#[test]
fn missing_corrupt_or_unreadable_chunk_is_eio_and_a_log_line_naming_it() {
    if !require(
        is_root() && Path::new("/dev/fuse").exists(),
        "needs root and /dev/fuse",
    ) {
        return;
    }
    let env = Env::new();
    let image = oci_image(
        &env.dir.path().join("oci"),
        &[vec![("data/blob", noise(11, 4 << 20))]],
    );
    env.ok(&["push", &image, "--name", "img", "--json"]);
    let names = chunks_by_index(&env, "img");
    // Two data chunks with distinct names, away from the filesystem metadata.
    let data: Vec<(usize, String)> = names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.clone().map(|n| (i, n)))
        .filter(|(i, _)| *i > 0)
        .collect();
    assert!(data.len() >= 5, "too few data chunks: {names:?}");
    let (missing_ix, missing) = data[1].clone();
    let (corrupt_ix, corrupt) = data[2].clone();
    let (good_ix, _) = data[3].clone();
    let (broken_ix, broken) = data[4].clone();
    assert!(names.iter().flatten().filter(|n| **n == missing).count() == 1);
    assert!(names.iter().flatten().filter(|n| **n == corrupt).count() == 1);
    std::fs::remove_file(env.chunk_path(&missing)).expect("deleting a chunk");
    // Another chunk's bytes under this name: a mismatch the worker must catch.
    std::fs::copy(env.chunk_path(&data[0].1), env.chunk_path(&corrupt)).expect("corrupting");
    // A store that fails (an error, not a miss): the object cannot be read.
    std::fs::remove_file(env.chunk_path(&broken)).expect("rm");
    // A symlink to itself: opening it fails with ELOOP, an I/O error.
    std::os::unix::fs::symlink(&broken, env.chunk_path(&broken)).expect("a loop in its place");

    let mnt = env.dir.path().join("mnt");
    let log = env.dir.path().join("daemon.log");
    env.ok(&[
        "mount",
        "img",
        mnt.to_str().expect("utf-8"),
        "--file-only",
        "--readahead-chunks",
        "0",
        "--log-file",
        log.to_str().expect("utf-8"),
    ]);
    let mounted = Mounted(&env, &mnt);
    let file = mnt.join("image");

    let (ok, err) = dd_chunk(&file, good_ix);
    assert!(ok, "an intact chunk must read: {err}");
    for ix in [missing_ix, corrupt_ix, broken_ix] {
        let (ok, err) = dd_chunk(&file, ix);
        assert!(!ok, "reading chunk {ix} must fail");
        assert!(err.contains("Input/output error"), "chunk {ix}: {err}");
    }
    drop(mounted);

    let text = std::fs::read_to_string(&log).expect("log file");
    let line_for = |name: &str| {
        text.lines()
            .find(|l| {
                l.contains(name)
                    && (l.contains("chunk unavailable") || l.contains("bad chunk in the store"))
            })
            .map(str::to_owned)
    };
    let line = line_for(&missing).unwrap_or_else(|| panic!("no line names {missing}:\n{text}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&format!("chunk_index={missing_ix}")),
        "{line}"
    );
    assert!(
        line.contains(&format!("offset={}", missing_ix as u64 * CHUNK)),
        "{line}"
    );
    assert!(line.contains("tier="), "{line}");
    let line = line_for(&corrupt).unwrap_or_else(|| panic!("no line names {corrupt}:\n{text}"));
    assert!(
        line.contains(&format!("chunk_index={corrupt_ix}")),
        "{line}"
    );
    assert!(line.contains("do not match the chunk name"), "{line}");
    assert!(
        line.contains("lode verify"),
        "a bad stored chunk hints at verify: {line}"
    );
    let line = line_for(&broken).unwrap_or_else(|| panic!("no line names {broken}:\n{text}"));
    assert!(line.contains(&format!("chunk_index={broken_ix}")), "{line}");
    assert!(line.contains("tier=\"store\""), "{line}");
    // Nothing about the intact chunk.
    assert!(!text.contains(&format!("chunk_index={good_ix} ")), "{text}");
}

/// The pid of the daemon serving `mnt`, from its state file in /run/lode.
fn daemon_pid(mnt: &Path) -> u32 {
    for entry in std::fs::read_dir("/run/lode").expect("/run/lode") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let state: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).expect("state file"))
                    .expect("state JSON");
            if state["mountpoint"].as_str() == mnt.to_str() {
                return state["pid"].as_u64().expect("pid") as u32;
            }
        }
    }
    panic!("no state file for {}", mnt.display());
}

fn kill(sig: &str, pid: u32) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill {sig} {pid}");
}

#[test]
fn a_stopped_daemon_fails_readers_after_request_timeout_and_umount_cleans_up() {
    use std::time::{Duration, Instant};
    if !oci_fixture::can_mount() {
        return;
    }
    let env = Env::new();
    let image = oci_image(
        &env.dir.path().join("oci"),
        &[vec![
            ("small", b"hello".to_vec()),
            ("data/blob", noise(12, 3 << 20)),
        ]],
    );
    env.ok(&["push", &image, "--name", "hung", "--json"]);
    let mnt = env.dir.path().join("mnt");
    env.ok(&[
        "mount",
        "hung",
        mnt.to_str().expect("utf-8"),
        "--readahead-chunks",
        "0",
        "--request-timeout",
        "3s",
    ]);
    let mounted = Mounted(&env, &mnt);
    assert_eq!(std::fs::read(mnt.join("small")).expect("small"), b"hello");
    let pid = daemon_pid(&mnt);

    kill("-STOP", pid);
    let (tx, rx) = std::sync::mpsc::channel();
    let blob = mnt.join("data/blob");
    let t0 = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(blob));
    });
    // 3 s acts as the kernel's 15 s check period; it fires within two.
    let result = rx.recv_timeout(Duration::from_secs(45));
    let waited = t0.elapsed();
    kill("-CONT", pid);
    match result {
        Err(_) => panic!("a reader still hangs after {waited:?}"),
        Ok(Ok(v)) => panic!("the stopped daemon's mount returned {} bytes", v.len()),
        Ok(Err(e)) => {
            eprintln!("reader failed after {waited:?}: {e}");
            assert_eq!(e.raw_os_error(), Some(libc_eio()), "{e}");
        }
    }

    // The aborted connection ends the daemon's session: once resumed it may
    // tear the mount down itself before `lode umount` runs, which then finds
    // nothing left to do. Either way nothing stays mounted (checked below).
    let out = env.run(&["umount", mnt.to_str().expect("utf-8")]);
    assert!(
        out.status.success() || String::from_utf8_lossy(&out.stderr).contains("no lode mount at"),
        "lode umount: {out:?}"
    );
    std::mem::forget(mounted);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(mnt.to_str().expect("utf-8")),
        "still mounted: {mounts}"
    );
    let t1 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
    {
        assert!(
            t1.elapsed() < Duration::from_secs(20),
            "daemon {pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// EIO (the tests do not depend on libc).
fn libc_eio() -> i32 {
    5
}
