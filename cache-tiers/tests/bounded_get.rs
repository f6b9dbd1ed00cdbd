//! A get reads at most the tier's object-size limit: an object stored under
//! a chunk's name that is far larger (here a 3 GiB sparse file) is refused
//! by its size, naming the key, before any of it is read, and the process's
//! peak memory stays flat. Alone in its test binary, so the peak RSS seen is
//! this test's.

use bytes::Bytes;
use cache_tiers::{Error, ObjectStoreTier, Tier};

/// Peak resident set of this process, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[tokio::test]
async fn a_huge_object_under_a_chunk_name_is_refused_by_its_size_with_memory_flat() {
    const LIMIT: u64 = 512 * 1024 + 16;
    let dir = tempfile::tempdir().unwrap();
    let tier = ObjectStoreTier::local(dir.path(), "chunks/")
        .unwrap()
        .with_name("l3")
        .with_max_object_size(LIMIT);
    let small = "a".repeat(64);
    let huge = "b".repeat(64);
    Tier::put(&tier, &small, Bytes::from(vec![7u8; LIMIT as usize]))
        .await
        .unwrap();
    // 3 GiB, sparse: costs no disk, but reading it would cost 3 GiB of memory.
    let f = std::fs::File::create(dir.path().join("chunks").join(&huge)).unwrap();
    f.set_len(3 << 30).unwrap();
    drop(f);

    let before = peak_rss_kib();
    let e = Tier::get(&tier, &huge).await.unwrap_err();
    let grown_mib = (peak_rss_kib() - before) / 1024;
    match &e {
        Error::ValueTooLarge {
            tier,
            key,
            size,
            limit,
        } => {
            assert_eq!(tier, "l3");
            assert_eq!(key, &huge);
            assert_eq!(*size as u64, 3 << 30);
            assert_eq!(*limit as u64, LIMIT);
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert!(e.to_string().contains(&huge), "{e}");
    assert!(
        grown_mib < 64,
        "peak RSS grew by {grown_mib} MiB reading a refused object"
    );

    // An object exactly at the limit still reads, byte for byte.
    let v = Tier::get(&tier, &small).await.unwrap().unwrap();
    assert_eq!(v.len() as u64, LIMIT);
    assert!(v.iter().all(|&b| b == 7));
}
