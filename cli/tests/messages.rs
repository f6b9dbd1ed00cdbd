//! Error messages a new user meets: one line, each fact once.

mod oci_fixture;

use oci_fixture::{Env, two_layer_image};

#[test]
fn a_wrong_keyring_is_one_line_naming_the_image_and_the_key_once() {
    let env = Env::new();
    let image = two_layer_image(&env.dir.path().join("img"), 1, 2);
    env.ok(&["push", &image, "--name", "app"]);
    let other = env.dir.path().join("other-keyring");
    env.ok(&["keyring", "new", other.to_str().unwrap()]);
    let out = env
        .cmd()
        .env("LODE_KMS", format!("local:{}", other.display()))
        .args(["pull", "app", "-o"])
        .arg(env.dir.path().join("x.img"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(err.matches("image app").count(), 1, "{err}");
    assert_eq!(err.matches("default@1").count(), 1, "{err}");
    assert_eq!(err.matches("unwrap").count(), 2, "{err}");
    assert!(!env.dir.path().join("x.img").exists());
}

/// One rule for files holding a decrypted image: owner-only (0600), from
/// `flatten` and from `pull`, even over an existing world-readable file.
#[test]
fn flatten_and_pull_write_image_files_0600() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let image = two_layer_image(&env.dir.path().join("img"), 1, 2);
    env.ok(&["push", &image, "--name", "app"]);
    let flat = env.dir.path().join("flat.img");
    env.ok(&["flatten", &image, "-o", flat.to_str().unwrap()]);
    let pulled = env.dir.path().join("pulled.img");
    std::fs::write(&pulled, b"old").unwrap();
    std::fs::set_permissions(&pulled, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.ok(&["pull", "app", "-o", pulled.to_str().unwrap()]);
    for f in [&flat, &pulled] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: {mode:o}", f.display());
    }
}
