//! Where `lode push` spools file contents: `--spool-dir`, `LODE_SPOOL_DIR`,
//! else `$TMPDIR`, else `/var/tmp` (not a RAM-backed `/tmp`).

mod oci_fixture;

use std::process::Command;

use oci_fixture::{Env, can_mount, noise, oci_image};

#[test]
fn push_spools_where_it_is_told_and_a_missing_dir_is_a_clear_error() {
    let env = Env::new();
    let image = oci_image(
        &env.dir.path().join("oci"),
        &[vec![("big", noise(7, 2 << 20))]],
    );

    let missing = env.dir.path().join("no-such-dir");
    let out = env.run(&[
        "push",
        &image,
        "--name",
        "a",
        "--spool-dir",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spool directory") && err.contains("no-such-dir"),
        "{err}"
    );
    assert!(!env.store().join("manifests/a").exists());

    // LODE_SPOOL_DIR works like the flag.
    let spool = env.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let out = env
        .cmd()
        .args(["push", &image, "--name", "a"])
        .env("LODE_SPOOL_DIR", &spool)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The spool really is there: a 64 KiB tmpfs cannot hold the 2 MiB file.
    if !can_mount() {
        return;
    }
    let tiny = env.dir.path().join("tiny");
    std::fs::create_dir_all(&tiny).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&tiny)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs");
    let out = env.run(&[
        "push",
        &image,
        "--name",
        "b",
        "--spool-dir",
        tiny.to_str().unwrap(),
    ]);
    let _ = Command::new("umount").arg(&tiny).status();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!env.store().join("manifests/b").exists());
}
