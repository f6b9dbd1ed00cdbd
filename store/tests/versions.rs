//! Conditional manifest writes on each kind of store: a write from a stale
//! version is a conflict and changes nothing.

use lode_store::{ManifestVersion, Push, Store, StoreUrl};

fn check(url: &str, dir: &std::path::Path) {
    let images: Vec<String> = (0..2u8)
        .map(|i| {
            let data = vec![i + 1; 300_000];
            lode_store::testing::oci_image(
                &dir.join(format!("img{i}")),
                &[&[("data/file", data.as_slice())]],
            )
            .unwrap()
        })
        .collect();
    let kms = lode_store::testing::local_kms(dir).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open_or_create(&StoreUrl::parse(url).unwrap()).unwrap();
        let push = |i: usize| {
            Push::new(
                &store,
                &images[i],
                "app",
                kms.clone(),
                "default",
                lode_store::chunk_core::Salt::new(1, [3; 32]),
                &lode_store::chunk_core::RustCrypto,
            )
            .run()
        };
        push(0).await.unwrap();
        let first = store.current_manifest("app").await.unwrap().unwrap();
        assert!(matches!(first.version, ManifestVersion::Present { .. }));
        push(1).await.unwrap();

        // A writer that started from the first version, or from nothing, loses.
        for stale in [first.version.clone(), ManifestVersion::Absent] {
            let e = store
                .put_manifest_if("app", &first.sealed, &stale)
                .await
                .unwrap_err();
            assert!(
                matches!(e, lode_store::Error::PushConflict { .. }),
                "{url}: {e:?}"
            );
        }
        assert_eq!(
            store.get_manifest("app").await.unwrap().source_ref(),
            images[1],
            "{url}: nothing changed"
        );
        // From the current version, the write goes through.
        let now = store.current_manifest("app").await.unwrap().unwrap();
        store
            .put_manifest_if("app", &first.sealed, &now.version)
            .await
            .unwrap();
        assert_eq!(
            store.get_manifest("app").await.unwrap().source_ref(),
            images[0]
        );
    });
}

#[test]
fn a_stale_conditional_write_is_a_conflict_on_a_file_store() {
    let dir = tempfile::tempdir().unwrap();
    check(
        &format!("file://{}", dir.path().join("store").display()),
        dir.path(),
    );
}

#[test]
fn a_stale_conditional_write_is_a_conflict_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    check("memory://", dir.path());
}
