//! A running worker survives its image being replaced and collected: the
//! replaced version's chunks are retained, so the mount reads every file.

mod oci_fixture;

use std::process::Command;

use oci_fixture::{Env, busybox_image, can_mount, two_layer_image};

/// `find MNT -type f` and `cat` of each; returns (files, failures).
fn read_every_file(mnt: &std::path::Path) -> (usize, Vec<String>) {
    let out = Command::new("find")
        .arg(mnt)
        .args(["-xdev", "-type", "f"])
        .output()
        .unwrap();
    let files: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let failed = files
        .iter()
        .filter(|f| std::fs::read(f).is_err())
        .cloned()
        .collect();
    (files.len(), failed)
}

fn run_with_retain(retain: &str) -> (usize, Vec<String>, String) {
    let env = Env::new();
    let Some(v1) = busybox_image(&env.dir.path().join("oci")) else {
        panic!("busybox image");
    };
    let v2 = two_layer_image(&env.dir.path().join("v2"), 4, 40);
    env.ok(&["push", &v1, "--name", "app"]);
    let mnt = env.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let cache = env.dir.path().join("cache");
    env.ok(&[
        "mount",
        "app",
        mnt.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--no-prefetch",
        "--kernel-readahead-kb",
        "0",
        "--readahead-chunks",
        "0",
    ]);
    // While it runs, the name moves on and gc collects what nothing names.
    let pushed = env.json(&["push", &v2, "--name", "app", "--json"]);
    assert_eq!(pushed["replaced"]["same_image"], false, "{pushed}");
    let ls = env.json(&["ls", "--json"]);
    assert_eq!(ls[0]["name"], "app");
    assert_eq!(ls[0]["older_versions"], 1, "{ls}");
    assert!(env.ok(&["ls"]).starts_with("NAME "), "ls prints a header");
    let gc = env.ok(&[
        "gc", "--delete", "--grace", "0s", "--retain", retain, "--json",
    ]);
    let (files, failed) = read_every_file(&mnt);
    env.ok(&["umount", mnt.to_str().unwrap()]);
    (files, failed, gc)
}

#[test]
fn a_mounted_image_reads_every_file_after_a_new_push_and_gc() {
    if !can_mount() {
        return;
    }
    let (files, failed, gc) = run_with_retain("7d");
    let gc: serde_json::Value = serde_json::from_str(&gc).unwrap();
    assert!(files >= 3, "busybox and its scripts: {files}");
    assert!(failed.is_empty(), "EIO on {failed:?} after {gc}");
    assert_eq!(gc["retired_versions"], 1, "{gc}");
    assert!(gc["retained_chunks"].as_u64().unwrap() > 0, "{gc}");

    // Without retention (as before versions were kept), the same run loses
    // the old version's chunks and the mount fails reads: the test above
    // can fail.
    let (files, failed, gc) = run_with_retain("0s");
    assert!(files >= 3);
    assert!(!failed.is_empty(), "nothing failed without retention: {gc}");
}
