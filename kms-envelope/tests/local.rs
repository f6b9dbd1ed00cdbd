//! `LocalKms`: the shared conformance suite plus keyring file rules.

use std::os::unix::fs::PermissionsExt;

use chunk_core::CryptoProvider;

use kms_envelope::testing::Suite;
use kms_envelope::{
    EncryptionContext, Error, Kms, LocalKms, add_key, block_on, new_keyring, new_keyring_with_key,
    rotate,
};

fn ctx() -> EncryptionContext {
    EncryptionContext::from([("lode:image".to_owned(), "app".to_owned())])
}

/// Every backend compiled in: each test body runs once per backend.
fn providers() -> &'static [&'static dyn CryptoProvider] {
    let all = chunk_core::enabled_providers();
    assert!(!all.is_empty(), "no crypto backend compiled in");
    all
}

fn keyring(p: &'static dyn CryptoProvider, dir: &tempfile::TempDir, file: &str) -> LocalKms {
    let path = dir.path().join(file);
    new_keyring_with_key(p, &path, "a").unwrap();
    add_key(p, &path, "b").unwrap();
    LocalKms::open(p, &path).unwrap()
}

#[test]
fn conformance_suite_file_keyring() {
    for &p in providers() {
        let dir = tempfile::tempdir().unwrap();
        let kms = keyring(p, &dir, "main");
        let foreign = keyring(p, &dir, "other"); // same names, other material
        let rotate_a = || -> kms_envelope::KmsFuture<'_, ()> {
            Box::pin(async { kms.rotate_key("a").map(|_| ()) })
        };
        block_on(
            Suite {
                kms: &kms,
                key_a: "a",
                key_b: "b",
                missing_key: "nope",
                foreign: Some(&foreign),
                rotate_a: &rotate_a,
            }
            .run(),
        );
        assert_eq!(
            kms.key_versions(),
            vec![("a".into(), vec![1, 2]), ("b".into(), vec![1])]
        );
    }
}

#[test]
fn conformance_suite_in_memory_keyring() {
    for &p in providers() {
        let kms =
            LocalKms::from_keys(p, [("a".into(), 1, [1; 32]), ("b".into(), 1, [2; 32])]).unwrap();
        let foreign =
            LocalKms::from_keys(p, [("a".into(), 1, [9; 32]), ("b".into(), 1, [8; 32])]).unwrap();
        let rotate_a = || -> kms_envelope::KmsFuture<'_, ()> {
            Box::pin(async { kms.rotate_key("a").map(|_| ()) })
        };
        block_on(
            Suite {
                kms: &kms,
                key_a: "a",
                key_b: "b",
                missing_key: "nope",
                foreign: Some(&foreign),
                rotate_a: &rotate_a,
            }
            .run(),
        );
    }
}

#[test]
fn new_keyring_has_a_default_key() {
    for &p in providers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert_eq!(new_keyring(p, &path).unwrap(), "default@1");
        let kms = LocalKms::open(p, &path).unwrap();
        assert_eq!(kms.key_versions(), vec![("default".into(), vec![1])]);
        let created = LocalKms::create(p, dir.path().join("k2")).unwrap();
        let dk =
            block_on(created.generate_data_key(kms_envelope::DEFAULT_KEY_NAME, &ctx())).unwrap();
        assert_eq!(dk.key_id, "default@1");
    }
}

#[test]
fn keyring_is_created_0600_and_never_overwritten() {
    for &p in providers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert_eq!(new_keyring_with_key(p, &path, "img").unwrap(), "img@1");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(
            new_keyring_with_key(p, &path, "img"),
            Err(Error::KeyringIo { .. })
        ));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "existing keyring changed"
        );
    }
}

#[test]
fn keyring_readable_by_group_or_others_is_refused() {
    for &p in providers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        new_keyring_with_key(p, &path, "img").unwrap();
        for mode in [0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match LocalKms::open(p, &path) {
                Err(e @ Error::InsecurePermissions { .. }) => {
                    assert!(e.to_string().contains(&format!("{mode:04o}")), "{e}");
                }
                other => panic!("mode {mode:o}: {other:?}"),
            }
            assert!(matches!(
                rotate(p, &path, "img"),
                Err(Error::InsecurePermissions { .. })
            ));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(LocalKms::open(p, &path).is_ok());
    }
}

#[test]
fn rotation_persists_and_old_versions_unwrap_after_reopen() {
    for &p in providers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        new_keyring_with_key(p, &path, "img").unwrap();
        let kms = LocalKms::open(p, &path).unwrap();
        let old = block_on(kms.generate_data_key("img", &ctx())).unwrap();
        assert_eq!(old.key_id, "img@1");
        assert_eq!(rotate(p, &path, "img").unwrap(), "img@2");
        assert_eq!(rotate(p, &path, "img").unwrap(), "img@3");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "rotation changed the mode");

        let kms = LocalKms::open(p, &path).unwrap();
        let new = block_on(kms.generate_data_key("img", &ctx())).unwrap();
        assert_eq!(new.key_id, "img@3");
        let got = block_on(kms.decrypt_with_key(&old.key_id, &old.wrapped, &ctx())).unwrap();
        assert_eq!(*got, *old.plaintext());
        assert!(block_on(kms.decrypt(&new.wrapped, &ctx())).is_ok());
        assert!(matches!(
            rotate(p, &path, "missing"),
            Err(Error::KeyNotFound { .. })
        ));
        assert!(matches!(
            add_key(p, &path, "img"),
            Err(Error::KeyExists { .. })
        ));
        // No temporary files left behind (the lock file stays, empty).
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, vec![std::ffi::OsString::from(".k.lock"), "k".into()]);
    }
}

#[test]
fn debug_of_kms_shows_names_not_keys() {
    for &p in providers() {
        let kms = LocalKms::from_keys(p, [("img".into(), 1, [0xab; 32])]).unwrap();
        let dbg = format!("{kms:?}");
        assert!(
            dbg.contains("img") && !dbg.contains("ab, ") && !dbg.contains("abab"),
            "{dbg}"
        );
        assert!(!dbg.contains("171"), "{dbg}");
    }
}

#[test]
fn seeded_rng_is_deterministic() {
    for &p in providers() {
        let make = || {
            LocalKms::from_keys(p, [("img".into(), 1, [1; 32])])
                .unwrap()
                .with_test_rng(42)
        };
        let a = block_on(make().generate_data_key("img", &ctx())).unwrap();
        let b = block_on(make().generate_data_key("img", &ctx())).unwrap();
        assert_eq!(a.plaintext(), b.plaintext());
        assert_eq!(a.wrapped, b.wrapped);
    }
}

#[test]
fn concurrent_rotations_never_lose_a_version() {
    for &p in providers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        new_keyring_with_key(p, &path, "img").unwrap();
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // Each thread has its own keyring handle, like separate processes.
                    let kms = LocalKms::open(p, &path).unwrap();
                    (0..5)
                        .map(|_| kms.rotate_key("img").unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 30, "two rotations got the same version");
        let kms = LocalKms::open(p, &path).unwrap();
        assert_eq!(kms.key_versions(), vec![("img".into(), (1..=31).collect())]);
    }
}

#[test]
fn blobs_wrapped_by_one_backend_unwrap_with_every_other() {
    let keys = || [("img".to_owned(), 1, [0x21; 32])];
    for &a in providers() {
        let wrapper = LocalKms::from_keys(a, keys()).unwrap();
        let dk = block_on(wrapper.generate_data_key("img", &ctx())).unwrap();
        for &b in providers() {
            let unwrapper = LocalKms::from_keys(b, keys()).unwrap();
            let got = block_on(unwrapper.decrypt(&dk.wrapped, &ctx()))
                .unwrap_or_else(|e| panic!("{} -> {}: {e:?}", a.name(), b.name()));
            assert_eq!(*got, *dk.plaintext(), "{} -> {}", a.name(), b.name());
        }
    }
}
