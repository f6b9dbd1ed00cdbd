//! Arbitrary bytes never panic the manifest decoder, and every accepted input
//! is the one canonical encoding of what it decodes to.
//!
//! `cargo +nightly fuzz run manifest_decode` (from `fuzz/`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = manifest::SealedManifest::decode(data) {
        assert_eq!(m.encode(), data, "decoder accepted a non-canonical encoding");
        assert_eq!(m.names().count(), m.chunk_count());
        let _ = m.public_digest();
        let _ = format!("{m:?}");
    }
});
