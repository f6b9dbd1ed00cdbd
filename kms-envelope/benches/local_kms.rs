//! Wrapping and unwrapping a data key with `LocalKms`.
//!
//! `cargo bench -p lode-kms-envelope --bench local_kms`

use std::hint::black_box;

use criterion::{Criterion, criterion_main};
use kms_envelope::{EncryptionContext, Kms, LocalKms, block_on};

fn bench(c: &mut Criterion) {
    // Every backend compiled in, side by side.
    for &provider in chunk_core::enabled_providers() {
        let name = provider.name();
        let kms = LocalKms::from_keys(provider, [("images".to_owned(), 1, [7; 32])]).unwrap();
        let ctx = EncryptionContext::from([("lode:image".to_owned(), "python-app".to_owned())]);
        let dk = block_on(kms.generate_data_key("images", &ctx)).unwrap();
        c.bench_function(&format!("local_kms/{name}/generate_data_key"), |b| {
            b.iter(|| block_on(kms.generate_data_key(black_box("images"), &ctx)).unwrap())
        });
        c.bench_function(&format!("local_kms/{name}/decrypt_with_key"), |b| {
            b.iter(|| {
                block_on(kms.decrypt_with_key("images", black_box(&dk.wrapped), &ctx)).unwrap()
            })
        });
    }
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
