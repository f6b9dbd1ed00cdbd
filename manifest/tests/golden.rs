//! Golden bytes: format version 2 (with a sealed image config) of one fixed
//! manifest, and format version 1 bytes that must keep opening.
//!
//! A data key and nonces are random in real use. Here the KMS is a `LocalKms`
//! with a fixed master key and a seeded RNG (`with_test_rng`), so sealing is
//! deterministic and the whole encoding can be pinned. The stored bytes also
//! open with a `LocalKms` that has the same master key and the normal OS RNG,
//! so old manifests stay readable whatever the RNG.

mod common;

use chunk_core::CryptoProvider;
use kms_envelope::{LocalKms, block_on};
use manifest::{ImageConfig, SealedManifest, image_context};
use sha2::{Digest, Sha256};

/// Format version 1, as pinned before the image config was sealed in.
const GOLDEN_HEX: &str = include_str!("golden/small-v1.hex");
const GOLDEN_SHA256: &str = "9e106fb7a2a4255763ae5434060864e1da31a3b18974676139370c7cdb8eb65a";

/// Format version 2: the same manifest sealed with [`golden_config`].
const GOLDEN_V2_HEX: &str = include_str!("golden/small-v2.hex");
const GOLDEN_V2_SHA256: &str = "c8125ee5866095c3df495fed077e5fce0ca2c0351366430f371a15a278c8eb98";

fn golden_config() -> ImageConfig {
    let mut c = ImageConfig::default();
    c.entrypoint = Some(vec!["/bin/app".into()]);
    c.cmd = Some(vec!["--serve".into(), "8080".into()]);
    c.env = vec![
        "PATH=/usr/bin:/bin".into(),
        "API_TOKEN=golden-secret".into(),
    ];
    c.working_dir = Some("/srv".into());
    c.user = Some("app:app".into());
    c.stop_signal = Some("SIGINT".into());
    c.labels.insert("org.example.team".into(), "storage".into());
    c.exposed_ports.insert("8080/tcp".into());
    c.os = Some("linux".into());
    c.architecture = Some("amd64".into());
    c
}

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
    block_on(common::small_manifest().seal_with_config(
        p,
        &kms,
        "golden",
        &ctx,
        Some(&golden_config()),
    ))
    .unwrap()
    .encode()
}

#[test]
fn sealing_the_fixed_manifest_gives_the_golden_bytes() {
    for &p in common::providers() {
        let bytes = seal_fixed(p);
        if std::env::var_os("LODE_BLESS").is_some() {
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/small-v2.hex"),
                hex::encode(&bytes) + "\n",
            )
            .unwrap();
            println!("sha256 {}", hex::encode(Sha256::digest(&bytes)));
            return;
        }
        assert_eq!(
            hex::encode(&bytes),
            GOLDEN_V2_HEX.trim(),
            "encoding changed: bump the format version"
        );
        assert_eq!(hex::encode(Sha256::digest(&bytes)), GOLDEN_V2_SHA256);
    }
}

#[test]
fn golden_v2_bytes_decode_and_open_with_their_config() {
    for &p in common::providers() {
        let bytes = hex::decode(GOLDEN_V2_HEX.trim()).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), GOLDEN_V2_SHA256);
        let sealed = SealedManifest::decode(&bytes).unwrap();
        assert_eq!(sealed.format_version(), 2);
        assert_eq!(sealed.encode(), bytes);
        // The secret in Env is sealed: not in the bytes in clear.
        assert!(!bytes.windows(13).any(|w| w == b"golden-secret"));
        let kms = golden_kms(p);
        let (m, config) = block_on(sealed.open_with_config(p, &kms, sealed.context())).unwrap();
        assert_eq!(m, common::small_manifest());
        assert_eq!(config, Some(golden_config()));
    }
}

#[test]
fn golden_v1_bytes_open_without_config_and_stay_v1_when_rewrapped() {
    for &p in common::providers() {
        let bytes = hex::decode(GOLDEN_HEX.trim()).unwrap();
        let sealed = SealedManifest::decode(&bytes).unwrap();
        assert_eq!(sealed.format_version(), 1);
        assert_eq!(sealed.encode(), bytes, "v1 re-encodes byte for byte");
        let kms = golden_kms(p);
        let (m, config) = block_on(sealed.open_with_config(p, &kms, sealed.context())).unwrap();
        assert_eq!(m, common::small_manifest());
        assert_eq!(config, None);
        let re = block_on(sealed.rewrap(p, &kms, "golden")).unwrap();
        assert_eq!(re.format_version(), 1);
        let re_bytes = re.encode();
        assert_eq!(SealedManifest::decode(&re_bytes).unwrap(), re);
        assert_eq!(
            block_on(re.open_with_config(p, &kms, re.context()))
                .unwrap()
                .1,
            None
        );
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
