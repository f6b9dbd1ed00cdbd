//! Both backends must produce identical bytes: convergence across backends
//! (a pusher on one, a worker on the other) must never break silently.
//!
//! Compiled only when both `rustcrypto` and `aws-lc-rs` are enabled
//! (`cargo test -p lode-chunk-core --all-features`).

#![cfg(all(feature = "rustcrypto", feature = "aws-lc-rs"))]
#![allow(missing_docs)]

use chunk_core::{
    AwsLc, CryptoProvider, RustCrypto, Salt, enabled_providers, open, open_trusted, seal,
};
use proptest::prelude::*;

#[test]
fn both_backends_are_listed() {
    let names: Vec<_> = enabled_providers().iter().map(|p| p.name()).collect();
    assert_eq!(names, ["rustcrypto", "aws-lc-rs"]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn identical_bytes_and_interchangeable(
        data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..100),
            proptest::collection::vec(any::<u8>(), 0..70_000),
        ],
        secret in any::<[u8; 32]>(),
    ) {
        let salt = Salt::new(1, secret);
        let a = seal(&RustCrypto, &salt, &data).expect("rustcrypto seal");
        let b = seal(&AwsLc, &salt, &data).expect("aws-lc seal");
        prop_assert_eq!(&a, &b);
        // Sealed by one, opened by the other.
        prop_assert_eq!(open(&AwsLc, &a.chunk_ref(), &a.ciphertext).expect("open"), data.clone());
        prop_assert_eq!(open(&RustCrypto, &b.chunk_ref(), &b.ciphertext).expect("open"), data.clone());
        // The primitives agree on their own too.
        prop_assert_eq!(RustCrypto.sha256(&data), AwsLc.sha256(&data));
        prop_assert_eq!(RustCrypto.hmac_sha256(&secret, &data), AwsLc.hmac_sha256(&secret, &data));
        // Both reject the same tampering.
        if !a.ciphertext.is_empty() {
            let mut bad = a.ciphertext.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0x80;
            prop_assert!(open_trusted(&RustCrypto, &a.key, &bad).is_err());
            prop_assert!(open_trusted(&AwsLc, &a.key, &bad).is_err());
        }
    }
}
