//! With `LODE_CORPUS` set: flatten every image of the corpus, check it with
//! `e2fsck -fn`, mount it and compare the mounted tree with an independent
//! reference, `umoci unpack` of the same image.

mod common;

use std::process::Command;

use common::fs::{Mount, diff, e2fsck, have, list_dir};
use flattener::{FlattenOptions, ImageRef, flatten};

const IMAGES: &[&str] = &[
    "debian-base",
    "python",
    "python-app",
    "python-numpy",
    "tools",
];

#[test]
fn corpus_images_pass_e2fsck_mount_and_match_umoci() {
    let Ok(corpus) = std::env::var("LODE_CORPUS") else {
        println!("skipped: LODE_CORPUS not set");
        return;
    };
    if !have("e2fsck") || !have("umoci") {
        return;
    }
    let work = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    for tag in IMAGES {
        let image = ImageRef::parse(&format!("oci:{corpus}/oci:{tag}")).unwrap();
        let out = work.path().join(format!("{tag}.ext4"));
        let s = flatten(&image, &FlattenOptions::default(), &out).unwrap();
        e2fsck(&out).unwrap_or_else(|e| panic!("{tag}: {e}"));
        let Some(m) = Mount::new(&out) else { return };
        let ours = list_dir(m.path());
        drop(m);
        let bundle = work.path().join(format!("{tag}.bundle"));
        let st = Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{corpus}/oci:{tag}"))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "umoci: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        let reference = list_dir(&bundle.join("rootfs"));
        std::fs::remove_dir_all(&bundle).unwrap();
        let d = diff(&ours, &reference, 30);
        assert!(
            d.is_empty(),
            "{tag}: mounted image and umoci unpack differ:\n{}",
            d.join("\n")
        );
        println!(
            "{tag}: {} MiB, sha256 {}, e2fsck clean, mounted, {} entries identical to umoci unpack",
            s.size >> 20,
            &s.sha256[..16],
            ours.len()
        );
        std::fs::remove_file(&out).unwrap();
    }
}
