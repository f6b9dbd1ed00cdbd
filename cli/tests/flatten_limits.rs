//! `lode flatten` of a deep image under a low open-file limit: flattening
//! keeps one spool file per layer open, so lode raises its soft limit to the
//! hard one, and when even the hard limit is too low it says so up front.

mod oci_fixture;

use std::process::Command;

use oci_fixture::oci_image;

const LODE: &str = env!("CARGO_BIN_EXE_lode");

/// Runs `lode flatten IMAGE -o OUT` under `ulimit ARGS` in a shell.
fn flatten_with_ulimit(ulimit: &str, image: &str, out: &std::path::Path) -> std::process::Output {
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit {ulimit} && exec \"$0\" flatten \"$1\" -o \"$2\""
        ))
        .arg(LODE)
        .arg(image)
        .arg(out)
        .env_remove("LODE_CONFIG")
        .output()
        .expect("running bash")
}

#[test]
fn a_deep_image_flattens_under_a_low_soft_limit_and_a_low_hard_limit_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let layers: Vec<Vec<(&str, Vec<u8>)>> = (0..300)
        .map(|i| vec![("f", format!("layer {i}\n").into_bytes())])
        .collect();
    let image = oci_image(&dir.path().join("oci"), &layers);

    // Soft limit 200, hard limit unchanged: lode raises the soft one.
    let out = dir.path().join("ok.img");
    let r = flatten_with_ulimit("-Sn 200", &image, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let line = String::from_utf8_lossy(&r.stdout);
    assert!(line.contains("300 layers"), "{line}");
    assert!(out.exists());

    // Hard limit 200: nothing to raise; a clear error and no output file.
    let out = dir.path().join("no.img");
    let r = flatten_with_ulimit("-n 200", &image, &out);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("300 layers") && err.contains("only 200 files") && err.contains("ulimit -n"),
        "{err}"
    );
    assert!(!out.exists());
}
