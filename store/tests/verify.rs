//! `verify` finds every bad chunk (missing, wrong size, wrong name) and the
//! images that use it; `delete_bad` and the next push heal the store; a push
//! alone replaces a stored chunk of the wrong size.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lode_store::chunk_core::RustCrypto;
use lode_store::{ChunkProblem, Push, PushSummary, Store, StoreUrl, VerifyOptions, verify};

struct Fixture {
    _dir: tempfile::TempDir,
    image: String,
    kms: Arc<lode_store::kms_envelope::LocalKms>,
    store_dir: PathBuf,
    store: Store,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Three distinct data chunks and a hole: 1.5 MiB of numbers, then zeros.
        let mut data: Vec<u8> = (0..(3 << 19) / 4u32)
            .flat_map(|i| i.to_le_bytes())
            .collect();
        data.resize(data.len() + (1 << 20), 0);
        let image = lode_store::testing::oci_image(
            &dir.path().join("oci"),
            &[&[("data/big.bin", data.as_slice())]],
        )
        .unwrap();
        let kms = lode_store::testing::local_kms(dir.path()).unwrap();
        let store_dir = dir.path().join("store");
        let url = StoreUrl::parse(&format!("file://{}", store_dir.display())).unwrap();
        let store = Store::open_or_create(&url).unwrap();
        Self {
            _dir: dir,
            image,
            kms,
            store_dir,
            store,
            rt: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    fn push(&self, name: &str) -> PushSummary {
        let salt = lode_store::chunk_core::Salt::new(1, [7; 32]);
        self.rt
            .block_on(
                Push::new(
                    &self.store,
                    &self.image,
                    name,
                    self.kms.clone(),
                    "default",
                    salt,
                    &RustCrypto,
                )
                .run(),
            )
            .unwrap()
    }

    fn verify(&self, opts: VerifyOptions) -> lode_store::VerifyReport {
        self.rt
            .block_on(verify(&self.store, &RustCrypto, &opts))
            .unwrap()
    }

    /// Stored chunk files, sorted by name.
    fn chunk_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.store_dir.join("chunks"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    fn pulls_intact(&self, name: &str) {
        let opened = self
            .rt
            .block_on(lode_store::open_image(
                &self.store,
                name,
                self.kms.as_ref(),
                &lode_store::TierConfig::store_only(),
                Default::default(),
            ))
            .unwrap();
        let size = opened.sealed.image_size();
        let mut buf = vec![0u8; size as usize];
        self.rt.block_on(opened.image.read_at(0, &mut buf)).unwrap();
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn verify_names_each_bad_chunk_and_its_images_and_delete_bad_plus_push_heals() {
    let f = Fixture::new();
    f.push("app");
    f.push("copy"); // same chunks under a second name
    let clean = f.verify(VerifyOptions::all());
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!(clean.images, ["app", "copy"]);
    let files = f.chunk_files();
    assert!(files.len() >= 4, "{files:?}");
    assert_eq!(clean.chunks, files.len() as u64);

    // Damage three chunks three ways.
    let (truncated, flipped, missing) = (&files[0], &files[1], &files[2]);
    let bytes = std::fs::read(truncated).unwrap();
    std::fs::write(truncated, &bytes[..bytes.len() - 1]).unwrap();
    let mut bytes = std::fs::read(flipped).unwrap();
    bytes[100] ^= 1;
    std::fs::write(flipped, &bytes).unwrap();
    std::fs::remove_file(missing).unwrap();

    let r = f.verify(VerifyOptions::images(vec!["app".into()]));
    assert_eq!(r.images, ["app"]);
    assert_eq!(r.bad.len(), 3, "{r:?}");
    let by_name = |p: &PathBuf| r.bad.iter().find(|b| b.chunk == file_name(p)).unwrap();
    assert!(matches!(
        by_name(truncated).problem,
        ChunkProblem::WrongSize { size, expected } if size + 1 == expected
    ));
    assert!(matches!(
        by_name(flipped).problem,
        ChunkProblem::WrongName { .. }
    ));
    assert_eq!(by_name(missing).problem, ChunkProblem::Missing);
    assert!(r.bad.iter().all(|b| !b.deleted && b.images == ["app"]));

    // Every image using them is named when all are checked.
    let r = f.verify(VerifyOptions::all().delete_bad(true));
    assert_eq!(r.bad.len(), 3);
    assert!(r.bad.iter().all(|b| b.images == ["app", "copy"]), "{r:?}");
    let deleted: Vec<_> = r.bad.iter().filter(|b| b.deleted).collect();
    assert_eq!(deleted.len(), 2, "the missing one has nothing to delete");
    assert!(!truncated.exists() && !flipped.exists());

    // The next push uploads what was deleted or missing; the store is whole.
    let s = f.push("app");
    assert_eq!(s.new, 3, "{s:?}");
    assert!(f.verify(VerifyOptions::all()).is_clean());
    f.pulls_intact("copy");
}

#[test]
fn a_push_replaces_a_stored_chunk_of_the_wrong_size() {
    let f = Fixture::new();
    f.push("app");
    let files = f.chunk_files();
    let good = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &good[..good.len() / 2]).unwrap(); // a torn write

    let s = f.push("app");
    assert_eq!((s.repaired, s.new), (1, 1), "{s:?}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), good);
    assert!(f.verify(VerifyOptions::all()).is_clean());
    f.pulls_intact("app");
}

#[test]
fn verify_of_an_unknown_image_is_an_error_naming_it() {
    let f = Fixture::new();
    let e =
        f.rt.block_on(verify(
            &f.store,
            &RustCrypto,
            &VerifyOptions::images(vec!["nope".into()]),
        ))
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}
