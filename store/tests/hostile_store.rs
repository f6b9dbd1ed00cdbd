//! A store that answers a chunk's name with something else: an object far
//! larger than any chunk is refused by its size before it is read (the read
//! fails naming the chunk, memory stays flat). Alone in its test binary, so
//! the peak RSS seen is this test's.

use lode_store::{Push, Store, StoreUrl, TierConfig, open_image};

/// Peak resident set of this process, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

#[test]
fn a_3_gib_object_under_a_chunk_name_fails_the_read_naming_the_chunk_with_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let image = lode_store::testing::oci_image(
        &dir.path().join("oci"),
        &[&[("data/big.bin", data.as_slice())]],
    )
    .unwrap();
    let kms = lode_store::testing::local_kms(dir.path()).unwrap();
    let salt = lode_store::chunk_core::Salt::new(1, [7; 32]);
    let store_dir = dir.path().join("store");
    let url = StoreUrl::parse(&format!("file://{}", store_dir.display())).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open_or_create(&url).unwrap();
        Push::new(
            &store,
            &image,
            "app",
            kms.clone(),
            "default",
            salt,
            &lode_store::chunk_core::RustCrypto,
        )
        .run()
        .await
        .unwrap();
        let sealed = store.get_manifest("app").await.unwrap();
        let (index, name) = (0..sealed.chunk_count())
            .find_map(|i| sealed.name(i).map(|n| (i, n)))
            .expect("a stored chunk");
        // Replace that chunk's object by a 3 GiB sparse file.
        let path = store_dir.join("chunks").join(name.to_hex());
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(3 << 30).unwrap();
        drop(f);

        let opened = open_image(
            &store,
            "app",
            kms.as_ref(),
            &TierConfig::store_only(),
            Default::default(),
        )
        .await
        .unwrap();
        let before = peak_rss_kib();
        let offset = index as u64 * u64::from(sealed.chunk_size());
        let mut buf = vec![0u8; 4096];
        let e = opened.image.read_at(offset, &mut buf).await.unwrap_err();
        let grown_mib = (peak_rss_kib() - before) / 1024;
        let text = chain(&e);
        assert!(
            text.contains(&name.to_hex()),
            "the error names the chunk: {text}"
        );
        assert!(
            text.contains("3221225472 bytes") && text.contains("524304"),
            "the error says the object is too large for a chunk: {text}"
        );
        assert!(grown_mib < 64, "peak RSS grew by {grown_mib} MiB");
    });
}
