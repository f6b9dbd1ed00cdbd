//! Decoding and opening the manifest of a 10 GiB image: 20,480 chunks of
//! 512 KiB. Baselines in the same process: copying and hashing the same bytes.
//!
//! `cargo bench -p lode-manifest --bench decode`

use std::hint::black_box;

use criterion::{Criterion, criterion_main};
use kms_envelope::{LocalKms, block_on};
use manifest::{ChunkKey, ChunkName, ChunkRef, Manifest, SealedManifest, image_context};
use sha2::{Digest, Sha256};

const CHUNKS: u32 = 20_480;
const CHUNK_SIZE: u32 = 512 * 1024;

fn manifest(hole_every: u32) -> Manifest {
    let chunks = (0..CHUNKS)
        .map(|i| {
            (hole_every == 0 || i % hole_every != 0).then(|| {
                let mut name = [0u8; 32];
                name[..4].copy_from_slice(&i.to_le_bytes());
                let mut key = [0x5a; 32];
                key[..4].copy_from_slice(&i.to_be_bytes());
                ChunkRef {
                    name: ChunkName::from_bytes(Sha256::digest(name).into()),
                    key: ChunkKey::from_bytes(Sha256::digest(key).into()),
                }
            })
        })
        .collect();
    Manifest {
        source_ref: "oci:/work/shared/corpus/oci:python-app".into(),
        source_digest: format!("sha256:{}", "ab".repeat(32)),
        image_size: u64::from(CHUNKS) * u64::from(CHUNK_SIZE),
        chunk_size: CHUNK_SIZE,
        salt_id: 1,
        tool_version: "lode 0.1.0".into(),
        chunks,
    }
}

fn bench(c: &mut Criterion) {
    let providers = chunk_core::enabled_providers();
    let provider = *providers.first().expect("a crypto backend compiled in");
    let kms = LocalKms::from_keys(provider, [("images".to_owned(), 1, [7; 32])]).unwrap();
    let ctx = image_context("python-app");
    for (label, hole_every) in [("all-present", 0), ("every-10th-a-hole", 10)] {
        let m = manifest(hole_every);
        let sealed = block_on(m.seal(provider, &kms, "images", &ctx)).unwrap();
        let bytes = sealed.encode();
        let present = m.chunks.iter().flatten().count();
        eprintln!(
            "{label}: {CHUNKS} chunks ({present} present): {} bytes, {:.2} bytes/chunk, {:.2} bytes/present chunk",
            bytes.len(),
            bytes.len() as f64 / f64::from(CHUNKS),
            bytes.len() as f64 / present as f64
        );
        let mut g = c.benchmark_group(format!("manifest-20480/{label}"));
        g.bench_function("baseline: copy bytes", |b| {
            b.iter(|| black_box(&bytes).to_vec())
        });
        g.bench_function("baseline: sha256 bytes", |b| {
            b.iter(|| Sha256::digest(black_box(&bytes)))
        });
        g.bench_function("decode", |b| {
            b.iter(|| SealedManifest::decode(black_box(&bytes)).unwrap())
        });
        g.bench_function("decode + names", |b| {
            b.iter(|| {
                let s = SealedManifest::decode(black_box(&bytes)).unwrap();
                s.names().flatten().count()
            })
        });
        g.bench_function("encode", |b| b.iter(|| black_box(&sealed).encode()));
        for &provider in providers {
            g.bench_function(
                format!("decode + open (LocalKms, {})", provider.name()),
                |b| {
                    b.iter(|| {
                        let s = SealedManifest::decode(black_box(&bytes)).unwrap();
                        block_on(s.open(provider, &kms)).unwrap()
                    })
                },
            );
        }
        g.finish();
    }
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
