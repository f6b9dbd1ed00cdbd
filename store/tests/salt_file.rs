//! The salt file is written like the keyring (issue 12, item 6): a planted
//! or stale `salts.tmp` never makes the secret readable by group or others.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use lode_store::Error;
use lode_store::salts::{current_salt, new_salt, write_private};

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Plants `salts.tmp` as a world-readable file and keeps it open, as a local
/// user who can write to the directory (or a stale file from an older run
/// read later) would.
fn plant_world_readable_tmp(dir: &Path) -> fs::File {
    let tmp = dir.join("salts.tmp");
    fs::write(&tmp, b"").unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
    fs::File::open(&tmp).unwrap()
}

fn assert_private(path: &Path) {
    let m = mode(path);
    assert_eq!(m & 0o077, 0, "{} has mode {m:o}", path.display());
}

#[test]
fn a_world_readable_salts_tmp_never_exposes_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("salts");
    for round in 1..=2u32 {
        // Round 1 creates the file, round 2 rotates it.
        let mut spy = plant_world_readable_tmp(dir.path());
        assert_eq!(new_salt(&path).unwrap(), round);

        assert_private(&path);
        assert_eq!(mode(&path), 0o600);
        assert!(
            !dir.path().join("salts.tmp").exists(),
            "no temp file is left behind"
        );
        // The planted file was never written to: whoever held it open
        // learned nothing.
        let mut seen = Vec::new();
        spy.read_to_end(&mut seen).unwrap();
        assert!(
            seen.is_empty(),
            "round {round}: the planted salts.tmp received {} bytes of the salt file",
            seen.len()
        );
        let secret = hex::encode(current_salt(&path).unwrap().expose_secret());
        assert!(!String::from_utf8_lossy(&seen).contains(&secret));
    }
    assert_eq!(current_salt(&path).unwrap().id(), 2);
}

#[test]
fn a_symlinked_salts_tmp_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("salts");
    let elsewhere = dir.path().join("elsewhere");
    fs::write(&elsewhere, b"").unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o644)).unwrap();
    symlink(&elsewhere, dir.path().join("salts.tmp")).unwrap();

    new_salt(&path).unwrap();

    assert_eq!(
        fs::read(&elsewhere).unwrap(),
        b"",
        "secret written through the symlink"
    );
    assert_eq!(mode(&elsewhere), 0o644);
    assert!(
        !fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(mode(&path), 0o600);
    assert!(fs::symlink_metadata(dir.path().join("salts.tmp")).is_err());
}

#[test]
fn write_private_replaces_a_planted_tmp_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("salts");
    let mut spy = plant_world_readable_tmp(dir.path());
    write_private(&path, b"current = 1\n").unwrap();
    assert_eq!(mode(&path), 0o600);
    let mut seen = Vec::new();
    spy.read_to_end(&mut seen).unwrap();
    assert!(seen.is_empty());
}

#[test]
fn group_or_other_access_is_refused_naming_path_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("salts");
    new_salt(&path).unwrap();
    for bad in [0o640, 0o604, 0o610, 0o601] {
        fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
        let err = current_salt(&path).unwrap_err();
        assert!(
            matches!(&err, Error::SaltMode { path: p, mode } if p == &path && *mode == bad),
            "{bad:o}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(&format!("{bad:o}")), "{text}");
        // Rotating reads the file first, so it refuses too and leaves it be.
        assert!(matches!(new_salt(&path), Err(Error::SaltMode { .. })));
        assert_eq!(mode(&path), bad);
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(current_salt(&path).unwrap().id(), 1);
}

#[test]
fn concurrent_rotations_never_lose_a_salt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("salts");
    let threads = 8;
    let mut ids: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| new_salt(&path).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    ids.sort_unstable();
    assert_eq!(ids, (1..=threads).collect::<Vec<u32>>());
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("[[salt]]").count(), threads as usize, "{text}");
    assert_eq!(current_salt(&path).unwrap().id() as usize, threads as usize);
}
