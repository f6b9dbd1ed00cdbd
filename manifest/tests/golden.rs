//! Golden bytes: format version 1 of one fixed manifest.
//!
//! A data key and nonces are random in real use. Here the KMS is a `LocalKms`
//! with a fixed master key and a seeded RNG (`with_test_rng`), so sealing is
//! deterministic and the whole encoding can be pinned. The stored bytes also
//! open with a `LocalKms` that has the same master key and the normal OS RNG,
//! so old manifests stay readable whatever the RNG.

mod common;

use chunk_core::CryptoProvider;
use kms_envelope::{LocalKms, block_on};
use manifest::{SealedManifest, image_context};
use sha2::{Digest, Sha256};

const GOLDEN_HEX: &str = include_str!("golden/small-v1.hex");
const GOLDEN_SHA256: &str = "9e106fb7a2a4255763ae5434060864e1da31a3b18974676139370c7cdb8eb65a";

/// The golden manifest as first pinned, with 16-byte chunks. The format is
/// the same; the decoder now refuses chunk sizes `chunk_core::Chunker`
/// cannot cut (not a power of two from 4 KiB to 16 MiB), and this is one.
const OLD_CHUNK16_HEX: &str = include_str!("golden/small-v1-chunk16.hex");
const OLD_CHUNK16_SHA256: &str = "14ad7e29eff8c206d725168e3ef6d5e5ba21f77b75cf9be9198cf592d242cd96";

fn golden_kms(p: &'static dyn CryptoProvider) -> LocalKms {
    LocalKms::from_keys(p, [("golden".to_owned(), 1, [0x42; 32])]).unwrap()
}

fn seal_fixed(p: &'static dyn CryptoProvider) -> Vec<u8> {
    let kms = golden_kms(p).with_test_rng(1);
    let mut ctx = image_context("app");
    ctx.insert("tenant".into(), "t1".into());
    block_on(common::small_manifest().seal(p, &kms, "golden", &ctx))
        .unwrap()
        .encode()
}

#[test]
fn sealing_the_fixed_manifest_gives_the_golden_bytes() {
    for &p in common::providers() {
        let bytes = seal_fixed(p);
        if std::env::var_os("LODE_BLESS").is_some() {
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/small-v1.hex"),
                hex::encode(&bytes) + "\n",
            )
            .unwrap();
            println!("sha256 {}", hex::encode(Sha256::digest(&bytes)));
            return;
        }
        assert_eq!(
            hex::encode(&bytes),
            GOLDEN_HEX.trim(),
            "encoding changed: bump the format version"
        );
        assert_eq!(hex::encode(Sha256::digest(&bytes)), GOLDEN_SHA256);
    }
}

#[test]
fn golden_bytes_decode_and_open_with_any_rng() {
    for &p in common::providers() {
        let bytes = hex::decode(GOLDEN_HEX.trim()).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), GOLDEN_SHA256);
        let sealed = SealedManifest::decode(&bytes).unwrap();
        assert_eq!(sealed.key_id(), "golden@1");
        assert_eq!(sealed.image_name(), "app");
        assert_eq!(sealed.chunk_count(), 4);
        assert_eq!(sealed.present_count(), 3);
        assert_eq!(sealed.salt_id(), 7);
        // The public digest is SHA-256 of the bytes up to the last name.
        let public_len = 65 + 1 + 3 * 32;
        assert_eq!(
            sealed.public_digest(p),
            <[u8; 32]>::from(Sha256::digest(&bytes[..public_len]))
        );
        let opened = block_on(sealed.open(p, &golden_kms(p))).unwrap();
        assert_eq!(opened, common::small_manifest());
    }
}

#[test]
fn the_old_golden_bytes_with_16_byte_chunks_are_refused() {
    let bytes = hex::decode(OLD_CHUNK16_HEX.trim()).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), OLD_CHUNK16_SHA256);
    match SealedManifest::decode(&bytes) {
        Err(manifest::Error::Malformed {
            field: "chunk size",
            offset: 41,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // The same bytes with a valid chunk size and image size decode again:
    // only those fields (bytes 33..45) and the keys' tag, whose AAD covers them, differ.
    let new = hex::decode(GOLDEN_HEX.trim()).unwrap();
    assert_eq!(bytes.len(), new.len());
    let differ: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != new[i]).collect();
    assert!(
        differ
            .iter()
            .all(|&i| (33..45).contains(&i) || i >= new.len() - 16),
        "{differ:?}"
    );
}
