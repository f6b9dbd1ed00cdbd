//! Helpers shared by the manifest integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use chunk_core::CryptoProvider;
use kms_envelope::{EncryptionContext, LocalKms, block_on};
use manifest::{ChunkKey, ChunkName, ChunkRef, Manifest, SealedManifest, image_context};

/// A byte that stands out in any rendering: hex `c3`, decimal `195`.
pub const KEY_BYTE: u8 = 0xc3;

/// Every crypto backend compiled in: the tests run each body once per backend.
pub fn providers() -> &'static [&'static dyn CryptoProvider] {
    let all = chunk_core::enabled_providers();
    assert!(!all.is_empty(), "no crypto backend compiled in");
    all
}

pub fn kms(p: &'static dyn CryptoProvider) -> LocalKms {
    LocalKms::from_keys(
        p,
        [
            ("k".to_owned(), 1, [0x42; 32]),
            ("k2".to_owned(), 1, [0x43; 32]),
        ],
    )
    .unwrap()
}

pub fn ctx() -> EncryptionContext {
    let mut c = image_context("app");
    c.insert("tenant".into(), "t1".into());
    c
}

/// 4 chunks of 4 KiB (the smallest valid chunk size), the third a hole,
/// the last one short.
pub fn small_manifest() -> Manifest {
    let chunk = |i: u8| {
        Some(ChunkRef {
            name: ChunkName::from_bytes([0x10 + i; 32]),
            key: ChunkKey::from_bytes([KEY_BYTE ^ i; 32]),
        })
    };
    Manifest {
        source_ref: "oci:/img:app".into(),
        source_digest: "sha256:abcd".into(),
        image_size: 3 * 4096 + 5,
        chunk_size: 4096,
        salt_id: 7,
        tool_version: "lode 0.1.0".into(),
        chunks: vec![chunk(0), chunk(1), None, chunk(3)],
    }
}

pub fn sealed_small(p: &dyn CryptoProvider, kms: &LocalKms) -> SealedManifest {
    block_on(small_manifest().seal(p, kms, "k", &ctx())).unwrap()
}

/// Renderings of key bytes a careless message could contain.
pub fn key_renderings(byte: u8) -> Vec<String> {
    vec![
        format!("{byte:02x}{byte:02x}"),
        format!("{byte:02X}{byte:02X}"),
        format!("{byte}, {byte}"),
    ]
}
